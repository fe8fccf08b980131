"""The random-weight copy of a checkout: ``build_random_checkout`` and what it writes."""

import json
import shutil
import sys
from pathlib import Path

from .standins import _TINY_FLOW_CODE, _TOKENIZER_CODE, _vocos_class

REPLACEMENTS = [
    ("ckpt/vq32k-phoneme-tokenizer: a byte-level tokenizer (whole tokens for CJK ideographs, "
     "GLM-4's special tokens, the G2P phonemes <|B|>.. and <|audio_0|>..<|audio_32767|>), "
     "loaded by AutoTokenizer.from_pretrained(trust_remote_code=True) from its own "
     "tokenization_standin.py",
     "the real tokenizer (a ChatGLM4 tiktoken rank table and the code that reads it) is "
     "published only with the weights on the model hubs"),
    ("ckpt/vocos2d/generator_jit.ckpt: a tiny TorchScript mel -> iSTFT vocoder with the "
     "interface utils/vocos_util.py calls ((B, T, 80) log-mel in, (B, T*640) samples at 32 kHz out)",
     "the repository ships only the loader; the Vocos2D class behind the scripted checkpoint "
     "is not in it"),
    ("frontend/campplus.onnx: a tiny ONNX graph, kaldi fbank (1, T, 80) -> mean over time -> "
     "192-dim speaker embedding",
     "the real CAM++ model is a Git LFS object: a plain checkout has no such file"),
    ("ckpt/flow/config.yaml builds the repository's Flow through tiny_flow.py, written into the "
     "copy: Flow is constructed on the meta device and its estimator is the repository's own "
     "DiT at 64 wide x 2 deep",
     "Flow.__init__ hard-codes the production DiT (768 wide, 18 deep, ~150M parameters): "
     "minutes per sentence on a CPU; every class in the flow path is still the repository's"),
    ("without CUDA only: cpu_shims() makes .cuda()/.to('cuda')/device='cuda' mean the CPU inside "
     "SpeechTokenizer.extract_speech_token, yaml_util.load_quantize_encoder, file_utils.load_wav "
     "and the vocoder loaders' 'cuda' defaults",
     "those calls hard-code CUDA; everywhere else the repository follows "
     "DEVICE = cuda if available else cpu"),
    ("without a loadable torchaudio only: torchaudio_without_native() copies the installed "
     "torchaudio's Python code without its lib/*.so and puts it first on the engine "
     "process's PYTHONPATH",
     "PyPI's torchaudio (2.11.1 for torch 2.13) is a CUDA 13 build: beside the CPU torch its "
     "_torchaudio.so fails with 'libc10_cuda.so: cannot open shared object file'. The "
     "repository needs only torchaudio's pure-Python kaldi.fbank (and Resample), which run "
     "as they are without the native library"),
    ("examples/prompt/*.wav, only where the checkout has a Git LFS pointer or nothing: a "
     "3 s voiced synthetic wav",
     "LFS objects are absent from a checkout made without git-lfs"),
]

TOKENIZER_DIR = "vq32k-phoneme-tokenizer"
AUDIO_TOKENS = 32768  # <|audio_0|>..<|audio_32767|>: get_special_token_ids' ats..ate
CJK = (0x4E00, 0x9FFF)  # whole tokens, so Chinese text costs about what it does with the real BPE
# GLM-4's own special tokens, <|endoftext|> first: get_special_token_ids requires every
# special it uses to be >= <|endoftext|>
SPECIAL_TOKENS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                  "<|user|>", "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                  "<|begin_of_video|>", "<|end_of_video|>", "<|begin_of_audio|>", "<|end_of_audio|>"]
EOA = "<|user|>"  # what glmtts_inference calls the end of audio

LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5)
SPEECH_TOKENIZER = dict(d_model=64, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=128,
                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128, num_mel_bins=128,
                        max_source_positions=1500, vocab_size=512,
                        # 100 mel frames/s -> conv2 stride 2 -> pooling 2 = 25 tokens/s, the
                        # repository's TOKEN_RATE; layers at and after quantize_position are
                        # in the file and skipped by load_quantize_encoder, as in the real one
                        pooling_kernel_size=2, pooling_position=2, quantize_position=2,
                        quantize_vocab_size=AUDIO_TOKENS, quantize_causal_encoder=True,
                        quantize_causal_block_size=200, encoder_causal_convolution=True)
FLOW = dict(speech_token_dim=32, vocab_size=AUDIO_TOKENS, input_frame_rate=25, mel_dim=80,
            spkr_emb_adaLN=True, speech_token_cfg=False, remove_spkr_concat_condition=True,
            t_scheduler="cosine", mel_framerate=50)
DIT = dict(trans_dim=64, depth=2, heads=2, dim_head=32, ff_mult=2, conv_layers=1)
VOCOS = dict(sample_rate=32000, hop=640, n_fft=2560, n_mels=80)


# -- the copy ---------------------------------------------------------------------------

def build_random_checkout(source, dest, seed=0):
    """Copy the checkout at ``source`` (without .git) to ``dest`` and write tiny random
    weights into it; returns ``dest`` as a Path. ``dest`` must not exist. Deterministic
    for a given ``seed``. Imports the copy's top-level packages into this interpreter
    (see the module docstring). Works the same on a CUDA machine (weights are written
    from the CPU)."""
    import torch

    source, dest = Path(source).resolve(), Path(dest).resolve()
    if not (source / "glmtts_inference.py").is_file():
        raise FileNotFoundError("%s is not a GLM-TTS checkout (no glmtts_inference.py)" % source)
    if dest.exists():
        raise FileExistsError("%s exists; build_random_checkout writes a fresh copy" % dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", "ckpt", "outputs", "__pycache__"))
    for sub in ("ckpt", "frontend"):
        (dest / sub).mkdir(exist_ok=True)
    # The builders below use the copy's own classes, imported from the copy itself, so
    # an engine later loaded from dest in this interpreter finds the same modules.
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
    torch.manual_seed(seed)
    vocab = _write_tokenizer(dest / "ckpt" / TOKENIZER_DIR)
    _write_llm(dest / "ckpt" / "llm", vocab)
    _write_speech_tokenizer(dest / "ckpt" / "speech_tokenizer")
    _write_flow(dest)
    _write_hift(dest / "ckpt" / "hift")
    _write_vocos(dest / "ckpt" / "vocos2d")
    _write_campplus(dest / "frontend" / "campplus.onnx", seed)
    _ensure_prompt_wavs(dest)
    return dest


def _tokenizer_vocab(checkout):
    """Token strings in id order."""
    phonemes = json.loads((checkout / "configs" / "G2P_all_phonemes.json").read_text(encoding="utf-8"))
    tokens = ["<0x%02X>" % b for b in range(256)]
    tokens += [chr(c) for c in range(CJK[0], CJK[1] + 1)]
    tokens += SPECIAL_TOKENS
    tokens += ["<|%s|>" % p for p in sorted(set(phonemes.values()))]
    tokens += ["<|audio_%d|>" % i for i in range(AUDIO_TOKENS)]
    return tokens




def _write_tokenizer(out):
    out.mkdir(parents=True)
    tokens = _tokenizer_vocab(out.parent.parent)
    (out / "vocab.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    (out / "tokenization_standin.py").write_text(_TOKENIZER_CODE, encoding="utf-8")
    config = {"tokenizer_class": "StandInTokenizer", "model_max_length": 1 << 20,
              "clean_up_tokenization_spaces": False,
              "auto_map": {"AutoTokenizer": ["tokenization_standin.StandInTokenizer", None]}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return tokens


def _write_llm(out, vocab):
    """A real LlamaForCausalLM. Random weights would emit text tokens as often as audio
    tokens (an audio token below <|audio_0|> breaks the flow model), so the weights are
    shaped: channel 0 of the residual stream is a constant 1 (every embedding has it, no
    layer writes it), and the output head uses it to push every token but the audio
    tokens and <|user|> (end of audio) far down. The end-of-audio logit rides on the same
    channel, sized so that a sentence ends a few tokens after the repository's minimum
    length (2 x its text tokens) instead of running to its maximum (20 x): without that
    the prompt history of use_cache is pruned away at once (MAX_LLM_SEQ_INP_LEN)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = {t: i for i, t in enumerate(vocab)}
    eot, eoa, ats = ids["<|endoftext|>"], ids[EOA], ids["<|audio_0|>"]
    config = LlamaConfig(vocab_size=len(vocab), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                         tie_word_embeddings=False, **LLM)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        head = model.lm_head.weight
        head.normal_(0.0, 2.0)
        head[:, 0] = 0.0
        audio = torch.zeros(len(vocab), dtype=torch.bool)
        audio[ats:ats + AUDIO_TOKENS] = True
        head[~audio] = 0.0
        head[~audio, 0] = -4.0
        head[eoa].normal_(0.0, 2.0)
        head[eoa, 0] = 2.2
    model.save_pretrained(str(out), safe_serialization=True)


def _write_speech_tokenizer(out):
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor
    from utils.whisper_models.configuration_whisper import WhisperVQConfig
    from utils.whisper_models.modeling_whisper import WhisperVQEncoder

    config = WhisperVQConfig(**SPEECH_TOKENIZER)
    # the whole encoder, final layer_norm and the layers past quantize_position included,
    # as the published checkpoint has them; load_quantize_encoder drops what it skips
    encoder = WhisperVQEncoder(config)
    with torch.no_grad():
        # spread the codebook so random features map to many different speech tokens
        encoder.codebook.weight.normal_(0.0, 1.0)
    tensors = {"model.encoder." + k: v.contiguous() for k, v in encoder.state_dict().items()}
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=SPEECH_TOKENIZER["num_mel_bins"]).save_pretrained(str(out))



def _flow_yaml():
    dit = dict(DIT, mel_dim=FLOW["mel_dim"], text_vocab_size=FLOW["vocab_size"],
               text_emb_dim=FLOW["speech_token_dim"], condition_dim=FLOW["mel_dim"],
               spkr_emb_adaLN=FLOW["spkr_emb_adaLN"], wav_lm_emb=False)

    def block(d, indent):
        pad = " " * indent
        return "".join("%s%s: %s\n" % (pad, k, json.dumps(v)) for k, v in d.items())

    return ("# Tiny random-weight flow for tests (tests/support/realrepo/): the repository's\n"
            "# Flow and DiT classes, see tiny_flow.py for why Flow is built through it.\n"
            "flow: !apply:tiny_flow.tiny_flow\n"
            "    estimator: !new:flow.dit.DiT\n" + block(dit, 8) + block(FLOW, 4))


def _write_flow(dest):
    import torch
    from hyperpyyaml import load_hyperpyyaml

    (dest / "tiny_flow.py").write_text(_TINY_FLOW_CODE, encoding="utf-8")
    out = dest / "ckpt" / "flow"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(_flow_yaml(), encoding="utf-8")
    with open(out / "config.yaml") as f:
        flow = load_hyperpyyaml(f)["flow"]
    torch.save(flow.state_dict(), str(out / "flow.pt"))


def _write_hift(out):
    import torch
    from utils.hift_util import HiFTInference

    # HiFTInference._build_model holds the only definition of the 24 kHz vocoder's
    # architecture; call it without loading weights
    builder = HiFTInference.__new__(HiFTInference)
    builder.device, builder.sample_rate = "cpu", 24000
    model = builder._build_model()
    out.mkdir(parents=True)
    torch.save(model.state_dict(), str(out / "hift.pt"))




def _write_vocos(out):
    import torch
    from librosa.filters import mel

    fbs = torch.from_numpy(mel(sr=VOCOS["sample_rate"], n_fft=VOCOS["n_fft"], n_mels=VOCOS["n_mels"]).T).float()
    model = _vocos_class()(VOCOS["n_mels"], VOCOS["n_fft"], VOCOS["hop"], fbs).eval()
    out.mkdir(parents=True)
    torch.jit.save(torch.jit.script(model), str(out / "generator_jit.ckpt"))


def _write_campplus(path, seed):
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise RuntimeError("writing the frontend/campplus.onnx stand-in needs the onnx package "
                           "(pip install onnx) in this interpreter") from None
    import numpy as np

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array((rng.standard_normal((80, 192)) * 0.1).astype(np.float32), "weight")
    bias = numpy_helper.from_array((rng.standard_normal(192) * 0.1).astype(np.float32), "bias")
    nodes = [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "weight"], ["projected"]),
             helper.make_node("Add", ["projected", "bias"], ["output"])]
    graph = helper.make_graph(nodes, "campplus_standin",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
                              initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="realrepo")
    model.ir_version = 8  # readable by every onnxruntime the extra may resolve to
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _ensure_prompt_wavs(dest):
    """The example prompts the default voice and the examples use; written only where
    the checkout has an LFS pointer (or nothing) instead of audio."""
    import numpy as np
    import soundfile as sf

    for jsonl in sorted((dest / "examples").glob("*.jsonl")):
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            prompt = json.loads(line).get("prompt_speech")
            if not prompt:
                continue
            wav = dest / prompt
            if wav.is_file() and wav.read_bytes()[:4] == b"RIFF":
                continue
            sr = 24000
            t = np.arange(3 * sr) / sr
            f0 = 160 + 30 * np.sin(2 * np.pi * 0.7 * t)
            phase = 2 * np.pi * np.cumsum(f0) / sr
            voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(wav), (0.25 * voiced).astype(np.float32), sr, subtype="PCM_16")

