"""What ``build_random_checkout`` writes or builds where the repository has no class of
its own (the hub-only tokenizer, the Vocos generator) or where its class is too big to
run on a CPU (the flow's DiT): see ``weights.REPLACEMENTS`` for the reasons."""

# Written into ckpt/vq32k-phoneme-tokenizer/ and imported from there by transformers
# (trust_remote_code), exactly as the real tokenizer's own code is.
_TOKENIZER_CODE = '''"""Stand-in for GLM-TTS's vq32k-phoneme-tokenizer (tests/support/realrepo/).

Byte-level, with whole tokens for CJK ideographs and for every <|...|> / [..MASK] token in
vocab.json. encode() adds nothing: get_special_token_ids needs one id per special token.
"""
import json
import re

from transformers import PreTrainedTokenizer

_SPECIAL = re.compile(r"<\\|[^|<>]{1,32}\\|>|\\[[gs]?MASK\\]|<sop>|<eop>")


class StandInTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, **kwargs):
        with open(vocab_file, encoding="utf-8") as f:
            self._tokens = json.load(f)
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        super().__init__(**kwargs)

    @property
    def vocab_size(self):
        return len(self._tokens)

    def get_vocab(self):
        return dict(self._ids)

    def _tokenize(self, text, **kwargs):
        out, pos = [], 0
        for m in _SPECIAL.finditer(text):
            if m.group(0) in self._ids:
                out += self._plain(text[pos:m.start()])
                out.append(m.group(0))
                pos = m.end()
        return out + self._plain(text[pos:])

    def _plain(self, text):
        out = []
        for ch in text:
            if ch in self._ids:
                out.append(ch)
            else:
                out += ["<0x%02X>" % b for b in ch.encode("utf-8")]
        return out

    def _convert_token_to_id(self, token):
        return self._ids[token]

    def _convert_id_to_token(self, index):
        return self._tokens[index]

    def convert_tokens_to_string(self, tokens):
        raw = bytearray()
        for t in tokens:
            if len(t) == 6 and t.startswith("<0x"):
                raw.append(int(t[3:5], 16))
            else:
                raw += t.encode("utf-8")
        return raw.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        import os
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self._tokens, f, ensure_ascii=False)
        return (path,)
'''


_TINY_FLOW_CODE = '''"""Builds the repository's Flow with a tiny DiT (tests/support/realrepo/).

Flow.__init__ always constructs its production DiT (768 wide, 18 deep); it is built on
the meta device here (no memory, no init) and its estimator is replaced by the
repository's own DiT at the size ckpt/flow/config.yaml gives.
"""
import torch

from flow.flow import Flow


def tiny_flow(estimator, **flow_options):
    with torch.device("meta"):
        flow = Flow(**flow_options)
    flow.estimator = estimator
    leftover = [name for name, p in flow.named_parameters() if p.is_meta]
    if leftover:
        raise ValueError("tiny_flow: parameters left on the meta device: %s" % leftover)
    return flow
'''



def _vocos_class():
    import torch

    class Vocos32kStandIn(torch.nn.Module):
        """(B, T, n_mels) log-mel -> (B, T * hop) samples: one conv, a linear head to
        magnitude and phase, inverse STFT (the shape of a Vocos iSTFT head)."""

        def __init__(self, n_mels: int, n_fft: int, hop: int, fbs: torch.Tensor):
            super().__init__()
            self.n_fft, self.hop = n_fft, hop
            self.conv = torch.nn.Conv1d(n_mels, 64, kernel_size=7, padding=3)
            self.head = torch.nn.Linear(64, (n_fft // 2 + 1) * 2)
            self.register_buffer("window", torch.hann_window(n_fft))
            self.register_buffer("fbs", fbs)  # used by Vocos2DInference.stft_mel
            self.spec_min = 1e-5

        def forward(self, mel_btc: torch.Tensor) -> torch.Tensor:
            frames = mel_btc.shape[1]
            x = torch.tanh(self.conv(mel_btc.transpose(1, 2))).transpose(1, 2)
            mag, phase = self.head(x).chunk(2, dim=-1)
            mag = torch.exp(mag.clamp(max=4.0)) * 0.05
            spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase)).transpose(1, 2)
            audio = torch.istft(spec, self.n_fft, hop_length=self.hop, win_length=self.n_fft,
                                window=self.window, center=True, length=frames * self.hop)
            return audio.clamp(-1.0, 1.0)

        @torch.jit.export
        def _stft(self, xs: torch.Tensor) -> torch.Tensor:
            return torch.stft(xs, self.n_fft, hop_length=self.hop, win_length=self.n_fft, window=self.window,
                              center=True, return_complex=True).transpose(-1, -2)

    return Vocos32kStandIn
