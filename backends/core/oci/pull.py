"""Pull an image: resolve it for a platform and extract its layers into a folder.

Layers are extracted while they download: ``extract_layer``'s producer thread pulls
pieces from ``RegistryClient.iter_blob``, which verifies the digest when the blob ends.
Extraction therefore runs before verification; that is safe because ``dest`` is a
staging folder the caller throws away on any error, and the extractor never writes
outside it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from backends.core.extract import ArchiveError, extract_layer
from backends.core.oci.client import RegistryClient
from backends.core.oci.manifest import Descriptor, ResolvedImage
from backends.core.oci.reference import Platform, Reference, as_reference
from backends.core.transfer import Cancelled, Watch


@dataclass(frozen=True)
class Progress:
    phase: str  # "downloading" or "extracting"
    label: str  # e.g. "layer 2/3 sha256:0123abcd"
    current_bytes: int  # over all layers, compressed
    total_bytes: int


def pull_image(
    ref: Reference | str,
    dest: Path,
    *,
    client: RegistryClient,
    platform: Platform | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    watch: Watch | None = None,
    resolved: ResolvedImage | None = None,
) -> ResolvedImage:
    """Pull ``ref`` for ``platform`` (default: this host) and extract its layers, in
    order and with whiteouts, into ``dest``: a staging folder, discarded on error.
    Returns what was pulled (its ``digest`` is what upgrade checks compare).

    ``watch`` (else one made of ``should_cancel`` and the client's timeout) holds the
    deadlines; it must have been made in this thread, which polls it for a cancel at
    least every ``transfer.POLL_SECONDS`` whatever the network does.

    ``resolved``: the image as the caller already resolved (and maybe verified) it.
    Its layers are what is pulled: the tag is not asked again, so a registry that
    moves it in between cannot swap what was checked for something else."""
    ref = as_reference(ref)
    platform = platform or Platform.host()
    watch = watch or client.watch(should_cancel)
    _check_cancel(watch, ref)
    image = resolved or client.resolve(ref, platform, watch=watch)
    tracker = _ProgressTracker(progress, sum(layer.size for layer in image.layers))
    for number, layer in enumerate(image.layers, 1):
        _check_cancel(watch, ref)
        tracker.start_layer(
            f"layer {number}/{len(image.layers)} {layer.digest[:19]}", layer.size
        )
        # The download runs in extract_layer's producer thread; progress and cancel
        # callbacks (which may use the database) stay in this thread: the producer
        # only records piece sizes, replayed here in order. extract_layer calls
        # replay for every piece and every POLL_SECONDS while it waits, so the cancel
        # check runs even while the network sends nothing; a cancel shuts the
        # producer's socket down (Watch.cancel).
        received: deque[int] = deque()
        chunks = client.iter_blob(ref, layer, on_bytes=received.append, watch=watch)

        def replay(received: deque[int] = received) -> None:
            while True:
                _check_cancel(watch, ref)
                if not received:
                    return
                tracker.received(received.popleft())

        _extract_verified(chunks, Path(dest), ref, layer, replay)
        replay()
    return image


@dataclass
class _ProgressTracker:
    """Bytes accumulated over all layers (LocalAI restarts its count at each layer).

    A layer is extracted while it downloads, so "downloading" covers both; the last
    piece of a layer is reported as "extracting", the tail end the user waits for.
    """

    callback: Callable[[Progress], None] | None
    total: int
    done: int = 0
    label: str = ""
    layer_end: int = 0

    def start_layer(self, label: str, size: int) -> None:
        self.label = label
        self.layer_end = self.done + size

    def received(self, size: int) -> None:
        self.done += size
        if self.callback is not None:
            phase = "extracting" if self.done >= self.layer_end else "downloading"
            self.callback(Progress(phase, self.label, self.done, self.total))


def _extract_verified(
    chunks: Iterator[bytes],
    dest: Path,
    ref: Reference,
    layer: Descriptor,
    on_piece: Callable[[], None],
) -> None:
    try:
        extract_layer(chunks, dest, on_piece=on_piece)
    except ArchiveError as exc:
        # A corrupt download often breaks the decompressor before the digest can be
        # checked: read the rest, so a mismatch is reported as what it is.
        for _ in chunks:
            pass
        raise type(exc)(f"{ref}: layer {layer.digest}: {exc}") from exc


def _check_cancel(watch: Watch, ref: Reference) -> None:
    try:
        watch.check()
    except Cancelled:
        raise Cancelled(f"{ref}: cancelled") from None
