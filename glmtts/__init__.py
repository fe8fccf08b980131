"""glmtts: a production daemon and ops tooling for GLM-TTS zero-shot text-to-speech."""

__version__ = "0.1.0"
