"""Running the checkout on a machine without CUDA (and only there)."""

import shutil
import sys
import threading
from pathlib import Path

_on_cpu = threading.local()


def _inside():
    return getattr(_on_cpu, "depth", 0) > 0


def _cpu_device(device):
    import torch
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.split(":", 1)[0] == "cuda":
        return "cpu"
    if isinstance(device, int) and not isinstance(device, bool):  # .to(0) means cuda:0
        return "cpu"
    return device


def _redirecting(fn):
    """``fn`` with CUDA meaning the CPU while it runs (on this thread)."""
    if getattr(fn, "_realrepo_cpu", False):
        return fn

    def wrapper(*args, **kwargs):
        _on_cpu.depth = getattr(_on_cpu, "depth", 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _on_cpu.depth -= 1

    wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
    wrapper._realrepo_cpu = True
    return wrapper


def _install_torch_redirects():
    """Tensor/Module .cuda()/.to() and the Whisper feature extractor's device argument,
    redirected only inside the wrapped repository functions (``_inside()``)."""
    import torch
    from transformers import WhisperFeatureExtractor

    if getattr(torch.Tensor.to, "_realrepo_cpu", False):
        return

    def to(original):
        def redirected(self, *args, **kwargs):
            if _inside():
                args = tuple(_cpu_device(a) for a in args)
                if "device" in kwargs:
                    kwargs["device"] = _cpu_device(kwargs["device"])
            return original(self, *args, **kwargs)
        return redirected

    def cuda(original):
        def redirected(self, *args, **kwargs):
            return self if _inside() else original(self, *args, **kwargs)
        return redirected

    def fbank(self, waveform, device="cpu"):
        return fbank.original(self, waveform, _cpu_device(device) if _inside() else device)

    fbank.original = WhisperFeatureExtractor._torch_extract_fbank_features
    for owner, name, new in ((torch.Tensor, "to", to(torch.Tensor.to)), (torch.Tensor, "cuda", cuda(torch.Tensor.cuda)),
                             (torch.nn.Module, "to", to(torch.nn.Module.to)),
                             (torch.nn.Module, "cuda", cuda(torch.nn.Module.cuda)),
                             (WhisperFeatureExtractor, "_torch_extract_fbank_features", fbank)):
        new._realrepo_cpu = True
        setattr(owner, name, new)


def _patch_functions(module, names):
    for name in names:
        if hasattr(module, name):
            setattr(module, name, _redirecting(getattr(module, name)))


def _patch_frontend(module):
    _patch_functions(module, ("load_wav",))
    module.SpeechTokenizer.extract_speech_token = _redirecting(module.SpeechTokenizer.extract_speech_token)


# module of the checkout -> what in it hard-codes CUDA
_CUDA_HARDCODED = {
    "utils.yaml_util": lambda m: _patch_functions(m, ("load_quantize_encoder",)),
    "utils.file_utils": lambda m: _patch_functions(m, ("load_wav",)),
    "utils.vocos_util": lambda m: _patch_functions(m, ("load_vocos_jit",)),
    "utils.hift_util": lambda m: _patch_functions(m, ("load_hift",)),
    "utils.tts_model_util": lambda m: _patch_functions(m, ("load_vocos_jit", "load_hift")),
    "cosyvoice.cli.frontend": _patch_frontend,
}


class _PatchOnImport:
    """A meta-path finder that lets the normal import happen, then patches the module
    (before the importing module binds names from it with ``from x import y``)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _CUDA_HARDCODED:
            return None
        import importlib.machinery
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module, patch = spec.loader.exec_module, _CUDA_HARDCODED[name]

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def cpu_shims():
    """Make this process run the checkout without CUDA. On a machine where
    ``torch.cuda.is_available()`` this does nothing and returns []; otherwise it returns
    the names it redirected. Call it before the engine imports the checkout (already
    imported modules are patched too). Idempotent."""
    import torch
    if torch.cuda.is_available():
        return []
    _install_torch_redirects()
    for name, patch in _CUDA_HARDCODED.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
    return sorted(_CUDA_HARDCODED)


def package_dir(python, name):
    """Where ``python`` would import package ``name`` from (without importing it)."""
    import subprocess
    return subprocess.run([python, "-c", "import importlib.util, os; "
                           "print(os.path.dirname(importlib.util.find_spec(%r).origin))" % name],
                          capture_output=True, text=True, check=True).stdout.strip()


def torchaudio_without_native(python, dest):
    """If ``python`` cannot import torchaudio because its native library does not load
    (a CUDA build beside a CPU torch), copy that interpreter's torchaudio without
    lib/*.so into ``dest`` and return ``dest`` (put it first on PYTHONPATH of the engine
    process; torchaudio then runs its pure-Python code, as it does when deployed without
    the library). Returns None when torchaudio imports as it is. Raises when torchaudio
    is missing or fails for another reason."""
    import subprocess
    probe = subprocess.run([python, "-c", "import torchaudio"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    if "Could not load this library" not in probe.stderr and "cannot open shared object" not in probe.stderr:
        raise RuntimeError("torchaudio does not import in %s:\n%s" % (python, probe.stderr[-2000:]))
    where = package_dir(python, "torchaudio")
    dest = Path(dest)
    shutil.copytree(where, dest / "torchaudio", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return dest

