"""The root module tree of a Qwen2.5-Omni checkpoint: `thinker`, and with audio output `talker` and
`token2wav`. Its state_dict keys are the checkpoint's tensor names, one for one."""

from __future__ import annotations

from torch import nn

from omni.config import OmniConfig
from omni.errors import AudioOutputUnavailable
from omni.thinker.model import Thinker

AUDIO_COMPONENTS = ("talker", "token2wav")


class OmniModel(nn.Module):
    def __init__(self, config: OmniConfig, audio_output: bool) -> None:
        super().__init__()
        self.config = config
        self.thinker = Thinker(config.thinker)
        self.audio_output = audio_output
        if audio_output:
            try:
                from omni.talker.model import Talker
                from omni.talker.token2wav import Token2Wav
            except ImportError as exc:
                raise AudioOutputUnavailable(
                    f"this omni build has no talker/token2wav implementation ({exc}); load with audio_output=False"
                ) from exc
            self.talker = Talker(config.talker)
            self.token2wav = Token2Wav(config.dit, config.bigvgan)

    def reset_buffers(self) -> None:
        reset_submodule_buffers(self)


def reset_submodule_buffers(root: nn.Module) -> None:
    """Recompute every non-persistent buffer (rope frequencies, sinusoid tables, filters) of `root`'s
    submodules on their device, after the tree was built on the meta device and materialised empty.
    Each family's root tree (this one, omni.qwen3.model) calls it."""
    for module in root.modules():
        if module is not root and hasattr(module, "reset_buffers"):
            module.reset_buffers()
