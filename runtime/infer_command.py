"""Detect objects with a deployed (or checkpoint) NanoDet-Plus model and draw them.

SOURCE is an image, a folder of images, a video file, or a webcam index (0, 1, ...). Annotated
images (or an annotated video) and detections.json go to --save-dir; one summary line is printed
per image. An unreadable image in a folder is reported and skipped.

MODEL is an .onnx, OpenVINO .xml, ncnn .param, a nanoplus checkpoint, or a folder with one.
Models exported by nanoplus carry their class names, input size and layout. Foreign NanoDet-Plus
files (upstream's ONNX, published ncnn models) are detected: input size from the file's input
shape or a number in its name (else --input-size), layout and logits-vs-sigmoid from a probe run
(override with --layout / --scores), 80 classes get the COCO names (else --names FILE).

examples:
  nanoplus infer model.onnx photos/ --save-dir out/
  nanoplus infer nanodet-plus-m_416.param dog.jpg --score-thr 0.4
  nanoplus infer model.xml street.mp4 --threads 4
  nanoplus infer model.onnx 0 --show                 # webcam 0
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from nanoplus.atomic import write_bytes_atomic, write_json_atomic

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


# ----------------------------------------------------------------------------------------------
# model options shared with `nanoplus eval`
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend, --threads, --precision and the foreign-model flags."""
    from nanoplus.runtime.backends import BACKEND_NAMES

    parser.add_argument("--backend", default="auto", choices=("auto", *BACKEND_NAMES),
                        help="inference engine (default: from the file type)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: the engine's own)")
    parser.add_argument("--precision", default=None,
                        help="OpenVINO: fp32 (default), fp16, bf16, auto; ncnn: auto (default), fp32")
    foreign = parser.add_argument_group("foreign models (files without nanoplus metadata)")
    foreign.add_argument("--input-size", default=None, metavar="SIZE",
                         help="network input: 416 or HEIGHTxWIDTH (default: from the file or its name)")
    foreign.add_argument("--names", default=None, metavar="FILE", help="class names, one per line")
    foreign.add_argument("--layout", default=None, choices=("NC", "CN"),
                         help="output layout: NC = (points, channels), CN = (channels, points) (default: detected)")
    foreign.add_argument("--scores", default=None, choices=("sigmoid", "logits"),
                         help="class outputs are sigmoid scores or raw logits (default: detected)")
    foreign.add_argument("--input-name", default=None, help="ncnn input blob (default: the first Input layer)")
    foreign.add_argument("--output-name", default=None, help="ncnn output blob (default: the final blob)")


def open_detector(args: argparse.Namespace, multi_label: bool = True, **thresholds):
    """A ``Detector`` from the parsed model options."""
    from nanoplus.runtime.detector import Detector

    return Detector(
        args.model, backend=args.backend, threads=args.threads, multi_label=multi_label,
        precision=args.precision, input_size=args.input_size, class_names=args.names,
        layout=args.layout, score_activation=args.scores, input_name=args.input_name,
        output_name=args.output_name, **thresholds,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="checkpoint, .onnx, .xml, .param, or a folder with one")
    parser.add_argument("source", metavar="SOURCE", help="image, folder of images, video file, or webcam index")
    parser.add_argument("--save-dir", default="runs/infer", help="where annotated files and detections.json go (default runs/infer)")
    parser.add_argument("--no-save", action="store_true", help="write nothing, only print")
    parser.add_argument("--coco-json", default=None, metavar="FILE",
                        help="also write the detections in the COCO results format (image_id from numeric "
                             "file names, else the image's position; category_id: COCO ids for the 80 COCO "
                             "classes, else the class index)")
    parser.add_argument("--score-thr", type=float, default=0.35, help="score threshold (default 0.35)")
    parser.add_argument("--iou-thr", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--max-det", type=int, default=100, help="detections kept per image (default 100)")
    parser.add_argument("--single-label", action="store_true", help="one class per point (argmax)")
    parser.add_argument("--show", action="store_true", help="show results in a window (where a display exists)")
    parser.add_argument("--hide-scores", action="store_true", help="draw class names without scores")
    add_model_arguments(parser)


# ----------------------------------------------------------------------------------------------
def _write_image_atomic(path: Path, img) -> None:
    import cv2

    ok, encoded = cv2.imencode(path.suffix or ".jpg", img)  # the suffix tells OpenCV the format
    if not ok:
        raise OSError(f"{path}: OpenCV cannot encode an image as '{path.suffix}'; use .jpg or .png")
    write_bytes_atomic(path, encoded.tobytes())


class _Window:
    """cv2.imshow where a display and a GUI-enabled OpenCV exist; a notice otherwise."""

    def __init__(self, wanted: bool):
        self.enabled = False
        if not wanted:
            return
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            print("--show: no display here (DISPLAY is not set); results are only saved", file=sys.stderr)
            return
        self.enabled = True

    def show(self, img, wait_ms: int) -> bool:
        """Show ``img``; False when the user pressed q / Esc (stop)."""
        if not self.enabled:
            return True
        import cv2

        try:
            cv2.imshow("nanoplus", img)
            key = cv2.waitKey(wait_ms) & 0xFF
        except cv2.error:
            print("--show: this OpenCV has no GUI support (opencv-python-headless); results are only saved",
                  file=sys.stderr)
            self.enabled = False
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            import cv2

            cv2.destroyAllWindows()


def _coco_category(detector):
    from nanoplus.runtime.coco import COCO_CATEGORY_IDS, is_coco

    if is_coco(detector.meta.class_names):
        return lambda class_id: COCO_CATEGORY_IDS[class_id]
    return lambda class_id: int(class_id)


def _coco_rows(image_id: int, detections, category) -> list[dict]:
    rows = []
    for box, score, cid in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.class_ids.tolist()):
        x1, y1, x2, y2 = box
        rows.append({"image_id": image_id, "category_id": category(cid),
                     "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                     "score": round(score, 6)})
    return rows


def _list_images(folder: Path) -> list[Path]:
    from nanoplus.runtime.datasets import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def run_images(detector, paths: list[Path], save_dir, window, hide_scores, coco_category, single: bool) -> dict:
    """Detect on each image; returns {"images": [...], "coco": [...], "skipped": [...]}."""
    from nanoplus.runtime.images import ImageReadError, display_path, read_image
    from nanoplus.runtime.draw import draw_detections

    images, coco, skipped = [], [], []
    for k, path in enumerate(paths, start=1):
        try:
            img = read_image(path)
        except ImageReadError as e:
            if single:
                raise
            skipped.append(display_path(path))
            print(f"[{k}/{len(paths)}] skipped: {e}", file=sys.stderr)
            continue
        start = time.perf_counter()
        dets = detector(img)
        ms = 1000.0 * (time.perf_counter() - start)
        print(f"[{k}/{len(paths)}] {display_path(path.name)} {img.shape[1]}x{img.shape[0]}: {dets.summary()} ({ms:.1f} ms)")
        image_id = int(path.stem) if path.stem.isdigit() else k
        images.append({"file": display_path(path), "image_id": image_id, "height": img.shape[0], "width": img.shape[1],
                       "inference_ms": round(ms, 2), "detections": dets.to_list()})
        coco.extend(_coco_rows(image_id, dets, coco_category))
        if save_dir is not None or window.enabled:
            drawn = draw_detections(img, dets, show_scores=not hide_scores)
            if save_dir is not None:
                _write_image_atomic(save_dir / path.name, drawn)
            if not window.show(drawn, 0):
                break
    return {"images": images, "coco": coco, "skipped": skipped}


def run_video(detector, source, name: str, save_dir, window, hide_scores, coco_category) -> dict:
    """Detect on every frame of a video file or camera; returns {"frames": [...], "coco": [...]}."""
    import cv2
    from tqdm import tqdm

    from nanoplus.errors import NanoplusError
    from nanoplus.runtime.draw import draw_detections
    from nanoplus.runtime.images import display_path, opencv_path

    safe_names = contextlib.ExitStack()  # OpenCV-safe names for the video and the save folder, while they are used
    capture = cv2.VideoCapture(source if isinstance(source, int) else safe_names.enter_context(opencv_path(source)))
    if not capture.isOpened():
        safe_names.close()
        what = f"camera {source}" if isinstance(source, int) else display_path(source)
        raise NanoplusError(f"{what}: cannot open this video source (missing file, unsupported codec, or no such camera)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, out_path, tmp_path, written = None, None, None, 0
    frames, coco, times = [], [], []
    bar = tqdm(total=total if not isinstance(source, int) else None, desc=display_path(name), unit="frame", file=sys.stderr)
    finished = stopped = False
    try:
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                start = time.perf_counter()
                dets = detector(frame)
                times.append(1000.0 * (time.perf_counter() - start))
                frames.append({"frame": index, "detections": dets.to_list()})
                coco.extend(_coco_rows(index, dets, coco_category))
                if save_dir is not None or window.enabled:
                    drawn = draw_detections(frame, dets, show_scores=not hide_scores)
                    if save_dir is not None:
                        if writer is None:
                            out_path = save_dir / f"{name}.mp4"
                            tmp_name = f".nanoplus-{os.getpid()}.tmp.mp4"
                            tmp_path = save_dir / tmp_name
                            writable = os.path.join(safe_names.enter_context(opencv_path(save_dir)), tmp_name)
                            writer = cv2.VideoWriter(writable, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                     (frame.shape[1], frame.shape[0]))
                            if not writer.isOpened():
                                writer = None
                                raise NanoplusError(f"{out_path}: OpenCV cannot write mp4 video here (no mp4v "
                                                    "encoder); use --no-save or an OpenCV build with FFmpeg")
                        writer.write(drawn)
                        written += 1
                    if not window.show(drawn, 1):
                        break
                index += 1
                bar.update(1)
        except KeyboardInterrupt:  # how a camera (or a long video) is stopped: keep what was done
            stopped = True
        finished = True
    finally:
        bar.close()
        capture.release()
        try:
            if writer is not None:
                writer.release()
                if finished:
                    publish_video(tmp_path, out_path, written, safe_names)
        finally:
            if tmp_path is not None and tmp_path.exists():
                tmp_path.unlink()  # an interrupted or unreadable video is not published
            safe_names.close()
    count = sum(len(f["detections"]) for f in frames)
    mean_ms = sum(times) / len(times) if times else 0.0
    print(f"{display_path(name)}: {len(frames)} frames, {count} detections, {mean_ms:.1f} ms per frame"
          + (" (stopped by Ctrl-C)" if stopped else "") + (f", saved {display_path(out_path)}" if out_path else ""))
    return {"frames": frames, "coco": coco, "skipped": []}


def publish_video(tmp_path: Path, out_path: Path, frames_written: int, safe_names: contextlib.ExitStack) -> None:
    """Move the finished video into place once OpenCV reads back every frame written.

    ``VideoWriter.write`` reports nothing: on a full disk it drops frames and leaves a file without
    its index, which would otherwise replace ``out_path`` silently.
    """
    import cv2

    from nanoplus.atomic import DiskFullError, LOW_SPACE_BYTES, free_bytes
    from nanoplus.errors import NanoplusError
    from nanoplus.runtime.images import display_path, opencv_path

    check = cv2.VideoCapture(safe_names.enter_context(opencv_path(tmp_path)))
    try:
        readable = check.isOpened()
        frames_read = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if readable else 0
    finally:
        check.release()
    if readable and frames_read == frames_written:
        os.replace(tmp_path, out_path)
        return
    free = free_bytes(out_path.parent)
    if free is not None and free < LOW_SPACE_BYTES:
        raise DiskFullError(out_path.parent)
    raise NanoplusError(f"{display_path(out_path)}: the video written is not readable back ({frames_read} of "
                        f"{frames_written} frames); it was not saved. Check the disk and run again, or use --no-save")


def refuse_overwriting_inputs(inputs: list[Path], save_dir, output_names: list[str]) -> None:
    """A clear error, before anything is written, when an annotated output would replace one of
    the inputs (``--save-dir`` is the source folder): the user's photos are never overwritten."""
    from nanoplus.errors import NanoplusError
    from nanoplus.runtime.images import display_path

    if save_dir is None:
        return
    for source, name in zip(inputs, output_names):
        target = save_dir / name
        if target.exists() and os.path.samefile(target, source):
            raise NanoplusError(
                f"--save-dir {display_path(save_dir)}: the annotated copy of {display_path(source.name)} would "
                "overwrite the input itself; choose another --save-dir (or --no-save)")


def run(args: argparse.Namespace) -> int:
    from nanoplus.errors import NanoplusError
    from nanoplus.runtime.images import display_path

    detector = open_detector(args, multi_label=not args.single_label, score_thr=args.score_thr,
                             iou_thr=args.iou_thr, max_det=args.max_det)
    print(f"model   {detector.describe()}")
    save_dir = None if args.no_save else Path(args.save_dir)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    window = _Window(args.show)
    category = _coco_category(detector)

    source = args.source
    path = Path(source)
    try:
        if path.is_dir():
            paths = _list_images(path)
            if not paths:
                subfolders = sorted(p.name for p in path.iterdir() if p.is_dir())
                raise NanoplusError(
                    f"{display_path(path)}: no images in this folder (.jpg, .png, .bmp, .tif, .webp, ...)"
                    + (f"; sub-folders are not searched — it has {len(subfolders)}: "
                       f"{', '.join(display_path(n) for n in subfolders[:5])}{', ...' if len(subfolders) > 5 else ''}; "
                       f"pass one of them, e.g. {display_path(path / subfolders[0])}" if subfolders else ""))
            refuse_overwriting_inputs(paths, save_dir, [p.name for p in paths])
            result = run_images(detector, paths, save_dir, window, args.hide_scores, category, single=False)
        elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
            refuse_overwriting_inputs([path], save_dir, [f"{path.stem}.mp4"])
            result = run_video(detector, str(path), path.stem, save_dir, window, args.hide_scores, category)
        elif path.is_file():
            refuse_overwriting_inputs([path], save_dir, [path.name])
            result = run_images(detector, [path], save_dir, window, args.hide_scores, category, single=True)
        elif source.isdigit():
            result = run_video(detector, int(source), f"camera{source}", save_dir, window, args.hide_scores, category)
        else:
            raise NanoplusError(f"{source}: no such image, folder or video (a webcam is given by its index, e.g. 0)")
    finally:
        window.close()

    if save_dir is not None:
        document = {
            "model": str(detector.model_path),
            "backend": detector.backend.name,
            "precision": detector.backend.precision,
            "class_names": list(detector.meta.class_names),
            "score_thr": detector.score_thr,
            "iou_thr": detector.iou_thr,
            "max_det": detector.max_det,
            "source": str(source),
            **{k: v for k, v in result.items() if k in ("images", "frames")},
            "skipped": result["skipped"],
        }
        write_json_atomic(save_dir / "detections.json", document)
        print(f"saved to {display_path(save_dir)}/ (detections.json and annotated files)")
    if args.coco_json:
        write_json_atomic(Path(args.coco_json), result["coco"])
        print(f"wrote {args.coco_json} ({len(result['coco'])} detections, COCO results format)")
    if result["skipped"]:
        print(f"{len(result['skipped'])} unreadable image(s) skipped", file=sys.stderr)
    return 0
