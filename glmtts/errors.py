"""Error types shared by the library, the service and the tools, and named exit codes.

Every error a user can cause carries a message that names what to fix. The service maps
each class to one HTTP status (see ``http_status``); the CLI prints ``str(err)`` on one
line and exits with the class's exit code, never a traceback.
"""

# Exit codes. 78 is sysexits' EX_CONFIG: systemd's RestartPreventExitStatus and
# supervisord's `exitcodes` use it to stop retrying a start that can never succeed
# until a human edits the configuration (gunicorn's WORKER_BOOT_ERROR idea).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ENGINE_LOAD = 3  # the model could not load: retried with backoff, then crash_loop
EXIT_PORT_IN_USE = 4  # someone else holds our port: retrying will not help by itself
# The CUDA context is lost (illegal memory access, device-side assert): nothing in this
# process can use the GPU again, but a fresh process can, so the manager must restart it.
# sysexits' EX_TEMPFAIL ("try again later"); no unit's RestartPreventExitStatus and no
# supervisord `exitcodes` list it, so Restart=always / autorestart=unexpected restart it.
EXIT_CUDA_LOST = 75
EXIT_CONFIG = 78


class GlmttsError(Exception):
    """Base class. ``code`` is a stable machine-readable name."""

    code = "internal_error"
    http_status = 500
    exit_code = EXIT_FAILURE

    def __init__(self, message, *, code=None):
        super().__init__(message)
        if code:
            self.code = code

    @property
    def message(self):
        return str(self)


class ConfigError(GlmttsError):
    code = "config_error"
    exit_code = EXIT_CONFIG


class InputError(GlmttsError):
    """Bad input from a user: wrong value, wrong type, too long, missing."""

    code = "invalid_request"
    http_status = 400
    exit_code = EXIT_USAGE


class AudioError(InputError):
    """Reference audio that cannot be used (not audio, too short, silent...)."""

    code = "invalid_audio"
    http_status = 400


class NotAudioError(AudioError):
    code = "unsupported_media_type"
    http_status = 415


class TooLargeError(InputError):
    code = "too_large"
    http_status = 413


class NotFoundError(InputError):
    code = "not_found"
    http_status = 404


class EngineError(GlmttsError):
    code = "engine_error"
    http_status = 500


class EngineLoadError(EngineError):
    code = "engine_load_failed"
    exit_code = EXIT_ENGINE_LOAD


class EngineOOMError(EngineError):
    """CUDA ran out of memory. Raised only *after* the engine released what it could,
    so the caller may retry (e.g. at 24 kHz) or answer 503."""

    code = "cuda_oom"
    http_status = 503


class CudaFatalError(EngineError):
    """The CUDA context is gone (illegal address, device-side assert): only a process
    restart recovers. The service answers what it holds with this error, then exits
    with EXIT_CUDA_LOST so its manager starts a fresh process."""

    code = "cuda_fatal"
    http_status = 503
    # A client may retry once the manager has restarted us: RestartSec (5) plus a start-up.
    retry_after = 10


class MemoryPressureError(EngineError):
    code = "memory_pressure"
    http_status = 503


class DiskFullError(GlmttsError):
    code = "disk_full"
    http_status = 507
