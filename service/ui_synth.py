"""The UI's Synthesize tab. It does what the user meant:

- An uploaded (or recorded) reference is used whenever one is present, whatever the
  Voice dropdown says; uploading one switches the dropdown to "(use the uploaded
  reference)", picking a saved voice clears the upload, so what is shown is what is used.
- The upload is validated by the API's own code (service/speech.py build_request ->
  glmtts/audio.py decode_reference), so a text file renamed .wav or a 1 s clip is the
  API's error message in the status line, never a silent fallback to the default voice.
- A saved voice is chosen by its id (the value behind "name (id)"); one deleted since
  the page loaded is the store's 404 naming it, never the default voice.
- The status line names the voice and the engine that produced the audio.
- The dropdown's choices are refreshed when it is opened, and after every save, rename
  or delete on the Voices tab (wired in ui.build), so a new voice is there at once.

The example (a shipped reference and its transcript) is glmtts/data/example_reference.wav:
espeak-ng speech made once with this project's own espeak engine (see
glmtts/data/example_reference.md), so it carries no one's personal voice."""

import os

import gradio as gr
import numpy as np

import glmtts
from glmtts.errors import GlmttsError, InputError

from .speech import build_request, parse_params, supported_rates

UPLOAD = "(use the uploaded reference)"
DEFAULT = "default"
DATA = os.path.join(os.path.dirname(os.path.abspath(glmtts.__file__)), "data")  # packaged: setup.cfg package_data
EXAMPLE_WAV = os.path.join(DATA, "example_reference.wav")
EXAMPLE_TEXT = os.path.join(DATA, "example_reference.txt")
DEFAULT_TEXT = "你好，欢迎使用语音合成服务。"


def voice_choices(runtime):
    """(shown, value) pairs: the default voice, the upload, then saved voices by id."""
    return [(DEFAULT, DEFAULT), (UPLOAD, UPLOAD)] + [("%s (%s)" % (m["name"], m["id"]), m["id"])
                                                      for m in runtime.voices.list()]


def refresh_choices(runtime):
    return gr.update(choices=voice_choices(runtime))


def describe_voice(runtime, voice, ref_path, ref_s=None):
    if ref_path:
        return "uploaded reference %s%s" % (os.path.basename(ref_path), " (%.1f s)" % ref_s if ref_s else "")
    if voice and voice != DEFAULT:
        try:
            meta = runtime.voices.find(voice)
            return "saved voice %s (%s)" % (meta["name"], meta["id"])
        except GlmttsError:
            return voice
    return "default"


def engine_words(runtime):
    d = runtime.engine.describe()
    return "%s (%s)" % (d.get("name") or runtime.settings.engine.name, d.get("device", "cpu"))


def synthesize(runtime, voice, ref_path, ptext, txt, sr, sd, speed, cache, phon, request):
    """(audio, status) for one click; every failure is a status line naming what to fix."""
    from .ui import admit

    s = runtime.settings
    rates = tuple(supported_rates(runtime.engine))
    try:
        admit(runtime, request)
        if not ref_path and voice == UPLOAD:
            raise InputError("upload or record a reference first (or pick a voice in the Voice list)")
        raw = {"input": txt or "", "voice": DEFAULT if ref_path else (voice or DEFAULT), "sample_rate": int(sr),
               "seed": int(sd if sd is not None else s.engine.seed), "use_cache": bool(cache),
               "phoneme": bool(phon), "prompt_text": ptext or "", "speed": float(speed or 1.0)}
        upload = None
        if ref_path:
            with open(ref_path, "rb") as f:
                upload = f.read()
        p = parse_params(raw, s, rates)
        req = build_request(runtime, p, upload)
        result = runtime.worker.wait_sync(runtime.worker.synthesize(req))
    except GlmttsError as e:
        return None, "**Error:** %s" % e
    except OSError as e:  # the upload vanished from Gradio's cache (pruned, or a restart)
        return None, "**Error:** the uploaded reference is no longer available (%s): upload it again" % e.strerror
    ref_s = len(req.prompt_audio) / float(req.prompt_sample_rate) if upload is not None else None
    pcm = (np.clip(result.audio, -1, 1) * 32767).astype(np.int16)
    status = "Done: %.1f s of audio at %d Hz · voice: %s · engine: %s" % (
        result.duration_s, result.sample_rate, describe_voice(runtime, raw["voice"], ref_path, ref_s),
        engine_words(runtime))
    if (result.meta or {}).get("prosody_matched"):
        status += " · prosody matched to the reference"
    if p["speed"] != 1.0:
        status += " · speed %gx" % p["speed"]
    return (result.sample_rate, pcm), status


def synthesize_tab(runtime):
    from .ui import length_hint

    s = runtime.settings
    rates = list(supported_rates(runtime.engine))
    caps = runtime.engine.describe().get("capabilities") or []
    with gr.Row():
        with gr.Column():
            # allow_custom_value: the choices change after the page is built (a voice saved
            # elsewhere); the store checks the id anyway (404 naming it).
            voice = gr.Dropdown(voice_choices(runtime), value=DEFAULT, label="Voice", allow_custom_value=True,
                                elem_id="tts-voice")
            ref = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="tts-ref",
                           label="Reference audio: upload or record %g-%g s of speech (used whenever present)"
                           % (s.limits.min_reference_s, s.limits.max_reference_s))
            prompt_text = gr.Textbox(label="Prompt text (transcript of the reference)", lines=1, elem_id="tts-ptext")
            text = gr.Textbox(label="Text to speak", lines=5, value=DEFAULT_TEXT, elem_id="tts-text")
            hint = gr.Markdown(length_hint(runtime, DEFAULT_TEXT), elem_id="tts-hint")
            with gr.Row():
                rate = gr.Radio(rates, value=s.engine.sample_rate if s.engine.sample_rate in rates else rates[0],
                                label="Sample rate")
                seed = gr.Number(value=s.engine.seed, precision=0, label="Seed")
                speed = gr.Slider(0.25, 4.0, value=1.0, step=0.05, label="Speed", elem_id="tts-speed")
            with gr.Row():
                # The prompt cache exists only where the engine declares it (the glmtts
                # engine); offering it on espeak would be a control that does nothing.
                has_cache = "prompt_cache" in caps
                use_cache = gr.Checkbox(value=s.engine.use_cache and has_cache, visible=has_cache,
                                        label="Prompt cache (earlier chunks as history; not a KV cache)")
                phoneme = gr.Checkbox(value=s.engine.phoneme, label="Phoneme (G2P dictionary)")
            go = gr.Button("Synthesize", variant="primary", elem_id="tts-go")
            if os.path.exists(EXAMPLE_WAV) and os.path.exists(EXAMPLE_TEXT):
                with open(EXAMPLE_TEXT, encoding="utf-8") as f:
                    transcript = f.read().strip()
                gr.Examples([[EXAMPLE_WAV, transcript, "今天天气很好，我们一起去公园散步吧。"]],
                            inputs=[ref, prompt_text, text], label="Example: a shipped reference and its transcript")
        with gr.Column():
            out = gr.Audio(label="Result", type="numpy", interactive=False, buttons=["download"], elem_id="tts-out")
            status = gr.Markdown(elem_id="tts-status")

    def run(voice_choice, ref_path, ptext, txt, sr, sd, cache, phon, sp, request: gr.Request):
        return synthesize(runtime, voice_choice, ref_path, ptext, txt, sr, sd, sp, cache, phon, request)

    def on_ref(path, current):
        # an upload (or recording) means "use it"; clearing it leaves no upload to use
        if path:
            return gr.update(value=UPLOAD)
        return gr.update(value=DEFAULT) if current == UPLOAD else gr.update()

    def on_pick(choice):
        # the user picked a saved voice or the default one: the upload would override it, so drop it
        return gr.update(value=None) if choice != UPLOAD else gr.update()

    text.change(lambda t: length_hint(runtime, t), inputs=text, outputs=hint)
    ref.change(on_ref, inputs=[ref, voice], outputs=voice, api_visibility="private", show_progress="hidden")
    voice.input(on_pick, inputs=voice, outputs=ref, api_visibility="private", show_progress="hidden")
    voice.focus(lambda: refresh_choices(runtime), outputs=voice, api_visibility="private", show_progress="hidden")
    # No Gradio concurrency limit of its own: the worker's queue (limits.max_concurrency,
    # limits.max_queue) admits or refuses a UI synthesis exactly as it does an API one,
    # instead of an unbounded Gradio queue in front of it.
    # speed last: callers of the UI's "synthesize" endpoint pass inputs by position
    go.click(run, inputs=[voice, ref, prompt_text, text, rate, seed, use_cache, phoneme, speed],
             outputs=[out, status], api_name="synthesize", concurrency_limit=None)
    return voice
