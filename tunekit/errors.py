"""The error family the library raises; the CLI turns each into one line and exit code 2."""


class TunekitError(Exception):
    """Base of every error a user can cause and fix (bad input, missing file, ...)."""


class SpecError(TunekitError):
    """A resolution spec, model name or other argument that cannot be parsed."""


class ExportError(TunekitError):
    """An ONNX export or its check against the reference failed."""


class OnnxModelError(TunekitError):
    """A user's ONNX file cannot be read or specialised."""


class BuildError(TunekitError):
    """A model that cannot be compiled for the target, or whose library does not match its reference."""


class ReportError(TunekitError):
    """A file that is not a usable bench report."""


class ArtifactError(TunekitError):
    """An artifact that cannot be loaded or run here, or an input it cannot take."""


class BenchError(TunekitError):
    """A benchmark that cannot run as asked (unknown backend, missing artifacts, GPU target without GPU)."""


class WorkerError(BenchError):
    """A backend's worker process failed (the message is one line); the other backends go on."""
