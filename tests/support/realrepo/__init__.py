"""A runnable copy of a real GLM-TTS checkout, with tiny random weights in the real formats.

The official repository's weights live only on model hubs, and CI has neither them nor
a GPU. ``build_random_checkout`` copies a checkout and writes every file ``load_models``
opens, each in the format the repository's own loader reads, produced by the
repository's own classes wherever the repository has them:

    ckpt/llm/                      LlamaForCausalLM.save_pretrained (config.json + safetensors)
    ckpt/speech_tokenizer/         WhisperVQConfig + model.safetensors (``model.encoder.*``)
                                   + WhisperFeatureExtractor's preprocessor_config.json
    ckpt/flow/config.yaml, flow.pt hyperpyyaml building flow.flow.Flow with flow.dit.DiT
    ckpt/hift/hift.pt              state dict of HiFTGenerator exactly as utils/hift_util builds it
    ckpt/vq32k-phoneme-tokenizer/  stand-in (see REPLACEMENTS)
    ckpt/vocos2d/generator_jit.ckpt  stand-in
    frontend/campplus.onnx         stand-in

What is not the real thing is listed, with the reason, in ``REPLACEMENTS``; only what
needs CUDA or an asset that cannot exist offline is replaced. The weights are random,
so the audio is noise: this proves that our adapter drives the real code, not that the
model speaks.

Two more pieces make the copy run on a machine without a GPU, and only there:
``cpu_shims()`` (the repository hard-codes ``.cuda()`` in three places) and
``torchaudio_without_native()`` (PyPI's torchaudio is a CUDA build). On a CUDA machine
neither is needed: ``cpu_shims()`` then installs nothing.

Everything here that touches torch imports the checkout's generic top-level packages
(``utils``, ``flow``, ``cosyvoice``, ``llm``) into the interpreter, so callers run it in a
process of their own through the command line:

    python -m tests.support.realrepo build SOURCE DEST [--seed N]
    python -m tests.support.realrepo engine --home DEST --state-dir DIR [--scenario load|conformance]

``engine`` loads ``glmtts.engines.glmtts_adapter.GlmTtsEngine`` over DEST (with
``cpu_shims()`` where CUDA is absent), runs the scenario and prints one JSON line of
measurements prefixed with ``REALREPO_RESULT``; the tests and benches decide what passes.

Needs, beside ``pip install '.[glmtts]'``: the ``onnx`` package (only to write the
campplus stand-in; the engine itself never imports it).

Modules: ``weights`` (the copy and its weights, ``REPLACEMENTS``), ``standins`` (the code
written into the copy where the repository has no class), ``cpu`` (running without
CUDA), ``child`` (the processes that build and drive it, and the command line).
"""

from .child import RESULT_PREFIX, ChildFailed, child_env, drive_engine, readonly_prefix, run_child
from .cpu import cpu_shims, package_dir, torchaudio_without_native
from .weights import REPLACEMENTS, build_random_checkout

__all__ = ["REPLACEMENTS", "RESULT_PREFIX", "ChildFailed", "build_random_checkout", "child_env", "cpu_shims",
           "drive_engine", "package_dir", "readonly_prefix", "run_child", "torchaudio_without_native"]
