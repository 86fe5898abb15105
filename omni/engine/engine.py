"""The serving engine: one loop per loaded model runs every live reply's next step, batched.

Every surface (OmniSession.stream, and through it the HTTP server, the demo and the Realtime API)
submits a prompt that is ready for the Thinker and reads the reply's events from a queue; a reply's
events, its cancellation and its ReplyDone are what they are for a reply run alone. Each iteration
of the loop (one thread, the only one that runs the Thinker, Talker and codec):

1. drops cancelled replies (they end with ReplyDone "cancelled" within one iteration);
2. admits waiting replies, first come first served, while the batch has room (`max_batch`) and
   their caches fit the memory budget (`kv_budget_bytes`: each live reply reserves its prompt plus
   max_new_tokens of Thinker cache and, when it speaks, the Talker's cache over the conversation);
3. reads one prefill chunk (`prefill_chunk` tokens) of the oldest reply still reading its prompt, so
   a long prompt never stalls the others by more than one chunk;
4. runs one batched Thinker decode step for every reply whose text is still running;
5. starts the Talker of replies whose first reply token exists (a one-row prefill over the
   conversation) and runs one batched Talker step for every reply whose next Talker input exists
   (and which is less than TALKER_LEAD_CODES ahead of its codec);
6. hands each reply's new codes to a codec worker, which decodes its windows as soon as their codes
   (and look-ahead) exist: one job per reply at a time, so its chunks stay in order, different
   replies' windows in parallel, most urgent listener first (omni.engine.codec_pool), while the loop
   goes on with the next Thinker and Talker steps. On a CPU the codec (DiT + BigVGAN) is most of a
   spoken reply's work and its windows are large enough to be compute-bound: batching eight windows
   costs as much per window as one (measured, small preset), so the codec gains from running beside
   the loop, not from batching;
7. ends replies whose text and audio are complete, and frees their Talker cache and codec state.

The caches: each conversation keeps its own one-row Thinker cache (the session's, so the next turn
of a conversation continues it without a copy), and the batched step runs the projections, MLPs and
vocabulary projection once for all rows while attention reads each row's cache at its own length
(`QwenDecoder.forward_rows`). That keeps a row's attention exactly what it is alone and lets a
conversation join and leave the batch without copying its cache; the price is one attention call
per row and layer, which a CPU does not feel and a GPU would (a slot or paged cache with one
attention kernel over all rows is the next step there).

Results do not depend on batching: each reply has its own sampler (its settings, seed and seen
tokens), its prefill chunks are a function of its prompt only, and the batch only changes the
floating-point summation order of the shared matrix products.

Memory: each stage a reply runs is measured (omni.memory_stats: its peak lands in the ReplyDone's
timings), and with `--offload talker|all` a spoken reply holds the Talker and codec on the device from
its Talker's start until it ends (omni.offload: counted, so overlapping replies share one copy).

Media decoding and the encoders run off the loop in `prepare` (a small worker pool): a reply
waiting for its media never holds up the others' steps. All threads the engine starts (the loop,
the codec workers, the prepare pool) share the one torch thread setting (`threads`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from omni.engine.codec_pool import CodecPool
from omni.engine.prefix_cache import PrefixCache
from omni.engine.reply import EngineReply, Phase, ReplyEvents
from omni.engine.runner import prefill_chunk, talker_step, thinker_step
from omni.errors import InputError
from omni.kv_cache import KVCache
from omni.memory_stats import StagePeaks, probe_for
from omni.pipeline import ReplyOptions, ReplyRecord, ReplyRun
from omni.sampling import Sampler
from omni.speech import TalkerContext
from omni.thinker.generate import ThinkerPrompt

log = logging.getLogger("omni.engine")
GIB = 1024**3
# A reply's Talker runs at most this many codes ahead of what its codec has taken (one later chunk
# of the default schedule: 192 mel frames): work a barge-in would throw away stays bounded, and when
# the codec is the bottleneck the cores go to it rather than to codes nobody can hear yet.
TALKER_LEAD_CODES = 96


class CacheMemoryError(InputError):
    """A reply's caches alone would exceed the engine's whole cache memory budget."""


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 16  # replies decoding at once; more wait their turn
    kv_budget_bytes: int | None = None  # Thinker + Talker cache memory of the live replies (None: no limit)
    prefill_chunk: int = 512  # prompt tokens read per iteration (a longer prompt takes several)
    threads: int | None = None  # torch threads for model work (None: leave PyTorch's setting)
    prepare_workers: int = 1  # threads decoding media and running the encoders
    # threads decoding codec windows (one reply's windows in order, different replies' in parallel),
    # while the loop runs the next Thinker and Talker steps; None: as many as torch threads
    codec_workers: int | None = None
    prefix_cache_bytes: int = 0  # conversations kept for stateless requests (0: none); see PrefixCache

    def checked(self) -> EngineOptions:
        if self.max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.prefill_chunk < 1:
            raise InputError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")
        if self.prepare_workers < 1:
            raise InputError(f"prepare_workers must be >= 1, got {self.prepare_workers}")
        if self.codec_workers is not None and self.codec_workers < 1:
            raise InputError(f"codec_workers must be >= 1, got {self.codec_workers}")
        if self.prefix_cache_bytes < 0 or (self.kv_budget_bytes is not None and self.kv_budget_bytes < 1):
            raise InputError("memory budgets must be positive")
        return self


class Engine:
    def __init__(self, loaded, options: EngineOptions | None = None) -> None:
        self.loaded = loaded
        self.options = (options or EngineOptions()).checked()
        self.prefix_cache = PrefixCache(self.options.prefix_cache_bytes)
        thinker_text = loaded.config.thinker.text
        element = loaded.model.thinker.dtype.itemsize
        self.thinker_bytes_per_token = 2 * thinker_text.num_layers * thinker_text.num_kv_heads * thinker_text.head_dim * element
        self.talker_bytes_per_token = 0
        if loaded.model.audio_output:
            # Qwen2.5-Omni's Talker decoder config is `decoder`, Qwen3-Omni's `text`
            talker = getattr(loaded.config.talker, "decoder", None) or loaded.config.talker.text
            self.talker_bytes_per_token = 2 * talker.num_layers * talker.num_kv_heads * talker.head_dim * element
        self._cond = threading.Condition()
        self._inbox: list[EngineReply] = []
        self._waiting: deque[EngineReply] = deque()
        self._live: list[EngineReply] = []
        self._kv_reserved = 0
        self._stopping = False
        self._finished = 0
        self._iterations = 0
        self.peak_batch = 0  # the most replies live at once so far
        # seconds the loop spent per stage (the codec inside "talker" starts and steps is split out)
        self.busy_s = {"prefill": 0.0, "thinker": 0.0, "talker": 0.0, "codec": 0.0, "talker_start": 0.0}
        # peak memory per stage of each reply (omni.memory_stats); offloaded stages (omni.offload)
        self.memory = probe_for(loaded.device)
        self.offload = getattr(loaded, "offload", None)
        self._prepare = concurrent.futures.ThreadPoolExecutor(self.options.prepare_workers,
                                                              thread_name_prefix="omni-prepare")
        codec_workers = self.options.codec_workers or self.options.threads or torch.get_num_threads()
        self._codec = CodecPool(codec_workers)
        self._thread = threading.Thread(target=self._loop, name="omni-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------
    # Surfaces' side

    def prepare(self, work: Callable[[], Any]) -> Any:
        """Run `work` (media decoding, encoders: everything before the Thinker) in the engine's
        worker pool and return its result; its errors raise here."""
        if self._stopping:
            raise RuntimeError("the engine has been closed")
        return self._prepare.submit(work).result()

    def submit(self, loaded_prompt: ThinkerPrompt, options: ReplyOptions, cache: KVCache, cancel: threading.Event,
               record: ReplyRecord, started_at: float | None = None, stage_s: dict[str, float] | None = None,
               talker_history: TalkerContext | None = None, observed_ids: torch.Tensor | None = None,
               cached_prompt_tokens: int = 0, memory: StagePeaks | None = None) -> ReplyEvents:
        """Queue one reply (its prompt continues `cache`); iterate the returned events.

        observed_ids: the tokens the repetition penalty has seen (default: the prompt's);
        cached_prompt_tokens: prompt tokens a prefix-cache hit put in `cache` (counted in usage);
        memory: the reply's peak memory per stage so far (its encoders'), which the engine adds to."""
        run = ReplyRun(self.loaded, loaded_prompt, options, record, started_at, stage_s, talker_history,
                       cached_prompt_tokens)
        thinker = self.loaded.model.thinker
        sampler = Sampler(options.sampling, 1, thinker.config.text.vocab_size, thinker.device)
        prompt_tokens = int(loaded_prompt.input_ids.shape[1])
        kv_bytes = self._kv_need(cache, prompt_tokens, options.max_new_tokens, talker_history, run.speaks)
        budget = self.options.kv_budget_bytes
        if budget is not None and kv_bytes > budget:
            raise CacheMemoryError(f"this reply needs {kv_bytes / GIB:.2f} GiB of cache memory (the conversation, "
                                   f"{prompt_tokens} prompt tokens and max_new_tokens={options.max_new_tokens}); the "
                                   f"engine's whole budget is {budget / GIB:.2f} GiB; ask for fewer tokens")
        reply = EngineReply(run, loaded_prompt, cache, cancel, sampler,
                            observed_ids if observed_ids is not None else loaded_prompt.input_ids, kv_bytes, memory)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine has been closed")
            self._inbox.append(reply)
            self._cond.notify()
        return ReplyEvents(reply, self._thread.is_alive)

    def stats(self) -> dict:
        with self._cond:
            waiting = len(self._waiting) + len(self._inbox)
            live = list(self._live)
        return {
            "batch_size": len(live),
            "queue_length": waiting,
            "prefilling": sum(r.phase is Phase.PREFILL for r in live),
            "decoding": sum(r.phase is Phase.DECODE for r in live),
            "speaking": sum(r.phase is Phase.SPEAKING for r in live),
            "max_batch": self.options.max_batch,
            "kv_reserved_bytes": self._kv_reserved,
            "kv_budget_bytes": self.options.kv_budget_bytes,
            "replies_finished": self._finished,
            "iterations": self._iterations,
            "peak_batch_size": self.peak_batch,
            "busy_s": {stage: round(seconds, 3) for stage, seconds in self.busy_s.items()},
            "prefix_cache": self.prefix_cache.stats(),
        }

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self._prepare.shutdown(wait=False, cancel_futures=True)
        self._codec.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------------------------------
    # The loop

    def _kv_need(self, cache: KVCache, prompt_tokens: int, max_new_tokens: int, talker_history, speaks: bool) -> int:
        thinker_tokens = cache.length + prompt_tokens + max_new_tokens
        need = thinker_tokens * self.thinker_bytes_per_token
        if speaks:
            history = talker_history.length if talker_history is not None else 0
            need += (history + prompt_tokens + 2 + max_new_tokens) * self.talker_bytes_per_token
        return need

    def _loop(self) -> None:
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        while True:
            with self._cond:
                while not (self._inbox or self._live or self._waiting or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    stopping = self._inbox + list(self._waiting) + self._live
                    self._inbox, self._live = [], []
                    self._waiting.clear()
                    break
                self._waiting.extend(self._inbox)
                self._inbox = []
            try:
                with torch.inference_mode():
                    progressed = self._iteration()
                if not progressed:  # every live reply waits for its codec job: sleep until one ends
                    with self._cond:
                        if not self._inbox and not self._stopping:
                            self._cond.wait(timeout=0.05)
            except BaseException as error:  # a failure outside any one reply: every live reply gets it
                log.exception("engine iteration failed")
                for reply in self._live:
                    self._drop(reply, error)
                self._live = []
        for reply in stopping:
            self._drop(reply, RuntimeError("the engine was closed while this reply was running"))

    def _iteration(self) -> bool:
        """One pass over the live replies; False when nothing could run (all wait for the codec)."""
        self._iterations += 1
        ended = self._finished
        for reply in list(self._waiting):
            if reply.cancel.is_set():
                self._waiting.remove(reply)
                reply.run.cancel()
                self._end(reply)
        for reply in list(self._live):
            if reply.cancel.is_set() and not reply.codec_busy:  # a codec job finishes its window first
                reply.run.cancel()
                self._end(reply)
        self._admit()
        progressed = self._prefill()
        progressed |= self._decode()
        progressed |= self._speak()
        progressed |= self._run_codec()
        return progressed or self._finished != ended

    def _run_codec(self) -> bool:
        """Hand each reply's new codes to a codec worker (one job per reply at a time); end the
        replies whose audio is complete."""
        submitted = False
        for reply in list(self._live):
            if reply.codec_busy:
                continue
            if reply.codec_job is not None:
                job, reply.codec_job = reply.codec_job, None
                if job.exception() is not None:
                    self._drop(reply, job.exception())
                    continue
            speech = reply.speech
            if speech is not None and reply.codec_codes:
                codes, reply.codec_codes = reply.codec_codes, []
                reply.codec_job = self._codec_job(reply, lambda s=speech, c=codes: s.codes_out(c))
                submitted = True
            elif reply.phase is Phase.SPEAKING and not self._still_speaking(reply):
                if speech is not None and not reply.codec_flushed:
                    reply.codec_flushed = True
                    reply.codec_job = self._codec_job(reply, speech.flush_codec)
                    submitted = True
                else:
                    self._end(reply)
                    submitted = True
        return submitted

    def _codec_job(self, reply: EngineReply, work):
        def job():
            began = time.perf_counter()
            with torch.inference_mode(), self.memory.measure_stage("codec", reply.memory):
                reply.emit(work())
            self.busy_s["codec"] += time.perf_counter() - began

        future = self._codec.submit(job, self._listener_runs_dry_at(reply))
        future.add_done_callback(self._wake)
        return future

    @staticmethod
    def _listener_runs_dry_at(reply: EngineReply) -> float:
        """When the reply's listener has heard all audio handed out so far (perf_counter seconds);
        for a reply with no audio out yet, when it was submitted (already overdue): the codec pool
        serves the earliest first (see omni.engine.codec_pool)."""
        speech = reply.speech
        progress = speech.progress
        if progress.chunks_out == 0 or progress.first_audio_at is None:
            return reply.submitted_at
        return speech.started_at + progress.first_audio_at + progress.samples_out / speech.sample_rate_hz

    def _wake(self, _future=None) -> None:
        with self._cond:
            self._cond.notify()

    def _admit(self) -> None:
        budget = self.options.kv_budget_bytes
        while self._waiting and len(self._live) < self.options.max_batch:
            reply = self._waiting[0]
            if budget is not None and self._live and self._kv_reserved + reply.kv_bytes > budget:
                return  # first come, first served: it waits for memory, and so do those behind it
            self._waiting.popleft()
            self._kv_reserved += reply.kv_bytes
            reply.phase = Phase.PREFILL
            prompt_tokens = int(reply.prompt.input_ids.shape[1])
            reply.cache.ensure_capacity(reply.cache.length + prompt_tokens + reply.run.options.max_new_tokens)
            self._live.append(reply)
            self.peak_batch = max(self.peak_batch, len(self._live))

    def _prefill(self) -> bool:
        reply = next((r for r in self._live if r.phase is Phase.PREFILL), None)
        if reply is None:
            return False
        thinker = self.loaded.model.thinker

        def read(r: EngineReply) -> None:
            began = time.perf_counter()
            with self.memory.measure_stage("thinker_prefill", r.memory):
                step = prefill_chunk(thinker, r, self.options.prefill_chunk)
            r.run.clock.add("prefill", time.perf_counter() - began)
            self.busy_s["prefill"] += time.perf_counter() - began
            if step is not None:
                r.steps = 1
                r.phase = Phase.DECODE
                self._after_thinker_step(r, step)

        self._guarded(reply, read)
        return True

    def _decode(self) -> bool:
        rows = [r for r in self._live if r.phase is Phase.DECODE and r.steps > 0]
        if not rows:
            return False
        began = time.perf_counter()
        try:
            with self.memory.measure_stage("thinker_decode", *(r.memory for r in rows)):
                steps = thinker_step(self.loaded.model.thinker, rows)
        except Exception as error:
            log.exception("a batched Thinker step failed")
            for reply in rows:
                self._drop(reply, error)
            return True
        self.busy_s["thinker"] += time.perf_counter() - began
        share = (time.perf_counter() - began) / len(rows)
        for reply, step in zip(rows, steps):
            reply.steps += 1
            reply.run.clock.add("thinker", share)
            self._guarded(reply, lambda r, s=step: self._after_thinker_step(r, s))
        return True

    def _after_thinker_step(self, reply: EngineReply, step) -> None:
        run = reply.run
        reply.emit(run.on_thinker_step(step))
        if run.text_done:
            reply.emit(run.end_text())
            reply.phase = Phase.SPEAKING

    def _speak(self) -> bool:
        model = self.loaded.model
        started = False
        for reply in list(self._live):
            speech = reply.speech
            if speech is not None and speech.can_start_talker():
                began = time.perf_counter()
                self._guarded(reply, self._start_talker)
                self.busy_s["talker_start"] += time.perf_counter() - began
                started = True
        # a reply whose first audio chunk is being decoded lets it have the cores (its time to first
        # audio is what a listener waits for); after that its Talker runs up to TALKER_LEAD_CODES ahead
        rows = [r for r in self._live if r.speech is not None and r.speech.can_step_talker()
                and len(r.codec_codes) < TALKER_LEAD_CODES
                and not (r.codec_busy and r.speech.progress.chunks_out == 0)]
        # Qwen3-Omni's Talker (a frame of 16 codes per step: the Talker, then its code predictor) has no
        # batched step yet: its replies step one by one here
        alone = [r for r in rows if not r.speech.batched_talker]
        rows = [r for r in rows if r.speech.batched_talker]
        for reply in alone:
            began = time.perf_counter()
            with self.memory.measure_stage("talker", reply.memory):
                self._guarded(reply, self._step_talker_alone)
            self.busy_s["talker"] += time.perf_counter() - began
        if not rows:
            return started or bool(alone)
        began = time.perf_counter()
        try:
            with self.memory.measure_stage("talker", *(r.memory for r in rows)):
                codes = talker_step(model.talker, [r.speech.talker for r in rows])
        except Exception as error:
            log.exception("a batched Talker step failed")
            for reply in rows:
                self._drop(reply, error)
            return True
        self.busy_s["talker"] += time.perf_counter() - began
        share = (time.perf_counter() - began) / len(rows)
        for reply, code in zip(rows, codes):
            reply.speech.clock.add("talker", share)
            if code is not None:
                reply.codec_codes.append(code)
        return True

    @staticmethod
    def _step_talker_alone(reply: EngineReply) -> None:
        code = reply.speech.step_talker()
        if code is not None:
            reply.codec_codes.append(code)

    def _start_talker(self, reply: EngineReply) -> None:
        if self.offload is not None and not reply.holds_speech:
            # an offloaded Talker and codec stay on the device until this reply ends (see _let_go)
            self.offload.acquire("speech")
            reply.holds_speech = True
        with self.memory.measure_stage("talker", reply.memory):
            code = reply.speech.start_talker_code()
        if code is not None:
            reply.codec_codes.append(code)

    @staticmethod
    def _still_speaking(reply: EngineReply) -> bool:
        speech = reply.speech
        return speech is not None and speech.talking

    def _guarded(self, reply: EngineReply, work) -> None:
        """Run one reply's own work; an error there ends that reply only."""
        try:
            work(reply)
        except Exception as error:
            if not isinstance(error, InputError):
                log.exception("a reply failed in the engine")
            self._drop(reply, error)

    def _end(self, reply: EngineReply) -> None:
        """The reply is complete (or cancelled): free what it holds, post ReplyDone."""
        self._settle_codec(reply)
        self._release(reply)
        self._let_go(reply)
        try:
            reply.run.close()
            reply.finish()
        except Exception as error:
            reply.fail(error)
        self._finished += 1

    def _drop(self, reply: EngineReply, error: BaseException) -> None:
        self._settle_codec(reply)
        self._release(reply)
        self._let_go(reply)
        try:
            reply.run.close()
        finally:
            reply.fail(error)
            self._finished += 1

    def _let_go(self, reply: EngineReply) -> None:
        """The reply's hold on an offloaded Talker and codec ends (its codec job has settled, and
        closing its streams touches no weight): the last reply to let go sends them back to host
        memory."""
        if reply.holds_speech:
            reply.holds_speech = False
            self.offload.release("speech")

    @staticmethod
    def _settle_codec(reply: EngineReply) -> None:
        """Wait for the reply's codec job (at most one window) before its codec state is freed."""
        job = reply.codec_job
        if job is not None:
            concurrent.futures.wait([job])
            reply.codec_job = None

    def _release(self, reply: EngineReply) -> None:
        if reply in self._live:
            self._live.remove(reply)
            self._kv_reserved -= reply.kv_bytes
        reply.phase = Phase.DONE


_engines_lock = threading.Lock()


def engine_for(loaded, options: EngineOptions | None = None) -> Engine:
    """The loaded model's engine, started on first use (with `options`, or the defaults). Passing
    options once an engine runs replaces it only if no reply is live (the server configures it
    before it serves)."""
    with _engines_lock:
        engine = getattr(loaded, "engine", None)
        if engine is not None and engine.alive and (options is None or options == engine.options):
            return engine
        if engine is not None:
            engine.close()
        engine = Engine(loaded, options)
        loaded.engine = engine
        return engine
