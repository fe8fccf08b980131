"""Drive the UI's Gradio endpoints over HTTP, as gradio_client does (it is not installed):
``POST /gradio_api/upload`` for files, ``POST /gradio_api/call/<api_name>`` then the
event stream ``GET /gradio_api/call/<api_name>/<event_id>`` for a click.

    ui = GradioAPI(svc.url)
    path = ui.upload("ref.wav", wav_bytes)
    listing, which, status = ui.call("save_voice", ["Anna", ui.file(path), "transcript"])

``inputs(api_name, by_label)`` builds a call's data from /gradio_api/info by component
label, so a test does not break when a tab gains an input it does not care about."""

import json

import requests


class GradioError(AssertionError):
    pass


class GradioAPI:
    def __init__(self, base_url, timeout=120):
        self.base = base_url.rstrip("/") + "/gradio_api"
        self.timeout = timeout
        self.http = requests.Session()

    def info(self):
        r = self.http.get(self.base + "/info", timeout=30)
        r.raise_for_status()
        return r.json()

    def parameters(self, api_name):
        return self.info()["named_endpoints"]["/" + api_name]["parameters"]

    def upload(self, name, data):
        """The server path Gradio stored the upload under."""
        r = self.http.post(self.base + "/upload", files=[("files", (name, data))], timeout=self.timeout)
        if r.status_code != 200:
            raise GradioError("upload of %s: HTTP %d %s" % (name, r.status_code, r.text[:300]))
        return r.json()[0]

    @staticmethod
    def file(path, name=None):
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def inputs(self, api_name, by_label):
        """Data for ``api_name``: for each parameter, the value of the first ``by_label``
        key its label starts with, else the parameter's default."""
        data = []
        for p in self.parameters(api_name):
            label = p.get("label") or ""
            for prefix, value in by_label.items():
                if label.startswith(prefix):
                    data.append(value)
                    break
            else:
                data.append(p.get("parameter_default"))
        return data

    def call(self, api_name, data):
        """The outputs of one click (a list), or GradioError with the event stream's error."""
        r = self.http.post(self.base + "/call/" + api_name, json={"data": data}, timeout=self.timeout)
        if r.status_code != 200:
            raise GradioError("call %s: HTTP %d %s" % (api_name, r.status_code, r.text[:300]))
        event_id = r.json()["event_id"]
        event = None
        with self.http.get("%s/call/%s/%s" % (self.base, api_name, event_id), stream=True,
                           timeout=self.timeout) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    payload = line.split(":", 1)[1].strip()
                    if event == "error":
                        raise GradioError("call %s failed: %s" % (api_name, payload))
                    return json.loads(payload)
        raise GradioError("call %s: the event stream ended without a result" % api_name)
