"""omni's browser demo: a Gradio voice/video chat on `OmniSession` (`omni demo MODEL`)."""
