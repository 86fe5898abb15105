"""One reply as the engine holds it: explicit state between engine iterations.

An `EngineReply` is what `Engine.submit` makes of a prompt: the conversation's Thinker cache (the
session's, so a later turn continues it), the reply's logic (`ReplyRun`: text, stop strings, what
the Talker reads, the Talker and codec streams), its Thinker sampler, where its prefill stands, the
token it feeds next and the queue its events go out on. The engine moves it through the phases
below; nothing else touches it while it is live.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from omni.events import AudioChunk, Event, ReplyDone, TextDelta
from omni.kv_cache import KVCache
from omni.memory_stats import StagePeaks
from omni.pipeline import ReplyRun
from omni.sampling import Sampler
from omni.thinker.generate import ThinkerPrompt


class Phase(enum.Enum):
    WAITING = "waiting"  # submitted, not admitted yet (batch full or cache memory short)
    PREFILL = "prefill"  # admitted: its prompt is read chunk by chunk
    DECODE = "decode"  # one Thinker token per engine iteration
    SPEAKING = "speaking"  # the text is complete; the Talker and codec finish the audio
    DONE = "done"


@dataclass
class PrefillCursor:
    """How far the prompt has been read, and the hidden states read so far (the Talker's context
    needs them all)."""

    embeds: torch.Tensor  # (1, seq, hidden) the whole prompt's input embeddings
    read: int = 0
    hidden: list[torch.Tensor] = field(default_factory=list)
    layer_hidden: list[torch.Tensor] = field(default_factory=list)  # Qwen3-Omni: the Talker's inner layer


class EngineReply:
    def __init__(self, run: ReplyRun, prompt: ThinkerPrompt, cache: KVCache, cancel: threading.Event,
                 sampler: Sampler, observed_ids: torch.Tensor, kv_bytes: int, memory: StagePeaks | None = None
                 ) -> None:
        self.run = run
        self.prompt = prompt
        self.cache = cache
        self.cancel = cancel
        self.sampler = sampler
        self.observed_ids = observed_ids  # what the repetition penalty has seen before the reply (1, n)
        self.kv_bytes = kv_bytes  # the Thinker and Talker cache memory admission reserves for it
        self.phase = Phase.WAITING
        self.prefill: PrefillCursor | None = None
        self.steps = 0  # Thinker steps taken (0: none; 1: the prefill's)
        self.next_token = -1  # the token the next decode step feeds
        self.next_position = 0
        self.submitted_at = time.perf_counter()
        # the codec runs in the engine's codec workers, one job per reply at a time, in order
        self.codec_codes: list[int] = []  # codes the Talker produced that the codec has not taken yet
        self.codec_job = None  # the running job (a Future), or None
        self.codec_flushed = False  # the last job (the codec's final chunks) has been submitted
        self.memory = memory if memory is not None else StagePeaks()  # peak memory per stage (omni.memory_stats)
        self.holds_speech = False  # it holds an offloaded Talker and codec on the device (omni.offload)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        # what the caller has received (see ReplyEvents), under `delivery`
        self.delivery = threading.Lock()
        self.delivered_chars = 0
        self.delivered_samples = 0

    @property
    def codec_busy(self) -> bool:
        return self.codec_job is not None and not self.codec_job.done()

    @property
    def speech(self):
        return self.run.speech if self.run.speaks else None

    def emit(self, events) -> None:
        for event in events:
            self.events.put(event)

    def fail(self, error: BaseException) -> None:
        self.phase = Phase.DONE
        self.events.put(error)

    def finish(self) -> ReplyDone:
        self.phase = Phase.DONE
        done = self.memory.stamp(self.run.done())
        self.events.put(done)
        return done


class ReplyEvents:
    """The caller's side: iterate the reply's events as the engine posts them (ends after
    ReplyDone; an error the engine hit for this reply is raised here).

    The engine runs ahead of a slow reader. Once the reply is cancelled, the text and audio not yet
    received are dropped, and the conversation keeps what the caller did receive (the ReplyDone it
    gets says so): a barge-in keeps what was shown and spoken, as a reply run alone does."""

    def __init__(self, reply: EngineReply, engine_alive) -> None:
        self._reply = reply
        self._engine_alive = engine_alive
        self._ended = False
        self._dropped = False

    def __iter__(self) -> ReplyEvents:
        return self

    def __next__(self) -> Event:
        if self._ended:
            raise StopIteration
        reply = self._reply
        while True:
            item = self._get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if isinstance(item, ReplyDone):
                self._ended = True
                if self._dropped:
                    return reply.memory.stamp(reply.run.cut_to_delivered(reply.delivered_chars,
                                                                         reply.delivered_samples))
                return item
            with reply.delivery:
                if reply.cancel.is_set():
                    self._dropped = True
                    continue
                if isinstance(item, TextDelta):
                    reply.delivered_chars += len(item.text)
                elif isinstance(item, AudioChunk):
                    reply.delivered_samples += len(item.samples)
            return item

    def _get(self):
        while True:
            try:
                return self._reply.events.get(timeout=1.0)
            except queue.Empty:
                if not self._engine_alive():
                    self._ended = True
                    raise RuntimeError("the serving engine stopped while this reply was running") from None
