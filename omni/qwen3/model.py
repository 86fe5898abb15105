"""The root module tree of a Qwen3-Omni checkpoint: `thinker`, and with audio output `talker` and
`code2wav`. Its state_dict keys are the checkpoint's tensor names, except the MoE experts, which omni
holds stacked per layer (`omni.qwen3.weights` maps the published per-expert names onto them)."""

from __future__ import annotations

from torch import nn

from omni.errors import AudioOutputUnavailable
from omni.model import reset_submodule_buffers
from omni.qwen3.config import Qwen3OmniConfig
from omni.qwen3.thinker import Thinker

AUDIO_COMPONENTS = ("talker", "code2wav")


class Qwen3OmniModel(nn.Module):
    def __init__(self, config: Qwen3OmniConfig, audio_output: bool) -> None:
        super().__init__()
        self.config = config
        self.thinker = Thinker(config.thinker)
        self.audio_output = audio_output
        if audio_output:
            try:
                from omni.talker.qwen3.code2wav import Code2Wav
                from omni.talker.qwen3.talker import Talker
            except ImportError as exc:
                raise AudioOutputUnavailable(
                    f"this omni build has no Qwen3-Omni talker/code2wav implementation ({exc}); load with "
                    "audio_output=False"
                ) from exc
            self.talker = Talker(config.talker)
            self.code2wav = Code2Wav(config.code2wav)
            # the prefill also returns this layer's hidden states: the Talker reads them at media positions
            self.thinker.talker_reads_layer = config.talker.accept_hidden_layer

    def reset_buffers(self) -> None:
        reset_submodule_buffers(self)
