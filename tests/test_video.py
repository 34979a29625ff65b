"""Video through `csd-fast upscale` and csd_fast.video: frames equal the image path's,
timestamps (variable rate too), frame rate and audio packets kept, odd sizes, the output
guard, interrupted runs leaving nothing under the final name, broken files, bounded memory."""
import hashlib
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csd_fast import EDSRCSD, save_checkpoint
from csd_fast.cli import main
from csd_fast.upscale import read_picture, upscale_picture, write_picture

av = pytest.importorskip("av")

from csd_fast.video import is_video, upscale_frames, upscale_video  # noqa: E402

TB = Fraction(1, 1000)


def make_video(path, w, h, n, *, codec="ffv1", audio=False, vfr=True, seed=0, options=None):
    """n random frames at 10 frames/s, every other gap 37 ms instead of 100 when vfr; an AAC
    mono track when audio. Returns the frames' times in seconds."""
    rng = np.random.default_rng(seed)
    times = []
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height = w, h
        s.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        s.time_base = s.codec_context.time_base = TB
        a = c.add_stream("aac", rate=8000) if audio else None
        if a is not None:
            a.layout = "mono"
        t = 0
        for i in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), format="rgb24")
            f.pts, f.time_base = t, TB
            times.append(float(t * TB))
            t += 37 if vfr and i % 2 else 100
            c.mux(s.encode(f))
        c.mux(s.encode(None))
        if a is not None:
            for i in range(6):
                samples = rng.uniform(-0.5, 0.5, (1, 1024)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                af.sample_rate, af.pts = 8000, i * 1024
                c.mux(a.encode(af))
            c.mux(a.encode(None))
    return times


def decoded(path):
    """(rgb frames, their times in seconds, the video stream's average rate)."""
    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
        frames = [(f.to_ndarray(format="rgb24"), f.time) for f in c.decode(video=0)]
    return [f for f, _ in frames], [t for _, t in frames], rate


def audio_packets(path):
    with av.open(str(path)) as c:
        return [(p.pts, bytes(p)) for p in c.demux(audio=0) if p.dts is not None]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for scale in (2, 3):
        torch.manual_seed(scale)
        model = EDSRCSD(scale, 1, 8, 1.0).eval()
        save_checkpoint(model, folder / f"x{scale}.safetensors")
        out[scale] = (model, folder / f"x{scale}.safetensors")
    return out


def cli(inputs, out, ckpt, *extra):
    return main(["upscale", *map(str, inputs), "-o", str(out), "--checkpoint", str(ckpt),
                 "--device", "cpu", "--quiet", *extra])


def image_path_result(model, rgb, folder, name, width=1.0):
    """What `csd-fast upscale` writes for this frame saved as a PNG."""
    Image.fromarray(rgb).save(folder / f"{name}.png")
    sr = upscale_picture(model, read_picture(folder / f"{name}.png"), width, torch.device("cpu"))
    write_picture(folder / f"{name}_sr.png", sr)
    return np.asarray(Image.open(folder / f"{name}_sr.png"))


@pytest.mark.parametrize("batch", [1, 3])
def test_ffv1_frames_equal_the_image_path_and_keep_timestamps(tmp_path, models, batch):
    model, ckpt = models[2]
    times = make_video(tmp_path / "clip.mkv", 17, 13, 7)
    # float32 as image_path_result runs (auto may pick bf16 on this CPU, for both paths alike)
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt, "--codec", "ffv1",
               "--batch", str(batch), "--width", "0.5", "--dtype", "float32") == 0
    got, got_times, _ = decoded(tmp_path / "out" / "clip.mkv")
    frames, _, _ = decoded(tmp_path / "clip.mkv")
    assert len(got) == 7 and got_times == pytest.approx(times, abs=1e-9)
    for i, (frame, out) in enumerate(zip(frames, got)):
        assert out.shape == (26, 34, 3)
        np.testing.assert_array_equal(out, image_path_result(model, frame, tmp_path, f"f{i}", 0.5))


def test_h264_keeps_rate_timestamps_and_audio_packets(tmp_path, models, capsys):
    _, ckpt = models[2]
    times = make_video(tmp_path / "clip.mp4", 18, 14, 6, codec="libx264", audio=True, vfr=False)
    assert cli([tmp_path / "clip.mp4"], tmp_path / "out", ckpt, "--crf", "18") == 0
    out = tmp_path / "out" / "clip.mp4"
    got, got_times, rate = decoded(out)
    assert len(got) == 6 and got[0].shape == (28, 36, 3)
    assert got_times == pytest.approx(times, abs=1e-3) and rate == 10
    assert audio_packets(out) == audio_packets(tmp_path / "clip.mp4")
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert "1 audio/subtitle stream(s) copied" in capsys.readouterr().out


def test_variable_rate_and_audio_into_another_container(tmp_path, models):
    _, ckpt = models[2]
    times = make_video(tmp_path / "clip.mkv", 18, 14, 5, audio=True)
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt, "--container", "mp4") == 0
    _, got_times, _ = decoded(tmp_path / "out" / "clip.mp4")
    assert got_times == pytest.approx(times, abs=1e-3)
    assert [b for _, b in audio_packets(tmp_path / "out" / "clip.mp4")] == \
        [b for _, b in audio_packets(tmp_path / "clip.mkv")]


def test_odd_output_is_padded_for_yuv420p_and_exact_with_ffv1(tmp_path, models):
    _, ckpt = models[3]
    make_video(tmp_path / "clip.mkv", 17, 13, 3)
    assert cli([tmp_path / "clip.mkv"], tmp_path / "h264", ckpt) == 0
    assert decoded(tmp_path / "h264" / "clip.mkv")[0][0].shape == (40, 52, 3)  # 51x39, one edge pixel added
    assert cli([tmp_path / "clip.mkv"], tmp_path / "ffv1", ckpt, "--codec", "ffv1") == 0
    assert decoded(tmp_path / "ffv1" / "clip.mkv")[0][0].shape == (39, 51, 3)


def test_content_not_suffix_decides(tmp_path, models):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 2)
    (tmp_path / "clip.mkv").rename(tmp_path / "clip.dat")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "img.png")
    assert is_video(tmp_path / "clip.dat") and not is_video(tmp_path / "img.png")
    assert cli([tmp_path / "clip.dat", tmp_path / "img.png"], tmp_path / "out", ckpt) == 0
    assert (tmp_path / "out" / "clip.mkv").exists()  # .dat: no muxer; Matroska and (tmp_path / "out" / "img.png").exists()


def test_folder_with_images_and_videos(tmp_path, models, capsys):
    _, ckpt = models[2]
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "a.mkv", 18, 14, 2)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "in" / "b.png")
    assert cli([tmp_path / "in"], tmp_path / "out", ckpt) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mkv", "b.png"]
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 1 image(s) and 1 video(s) to {tmp_path / 'out'}"


def test_codec_the_container_cannot_hold_is_refused_before_work(tmp_path, models, capsys):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 2)
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt, "--container", "webm") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot hold libx264" in err and "--container mkv" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_output_refused_and_input_never_replaced(tmp_path, models, capsys):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 2)
    before = sha256(tmp_path / "clip.mkv")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip.mkv").write_bytes(b"keep")
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "clip.mkv").read_bytes() == b"keep"
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt, "--overwrite") == 0
    assert len(decoded(tmp_path / "out" / "clip.mkv")[0]) == 2
    assert cli([tmp_path / "clip.mkv"], tmp_path, ckpt, "--overwrite") == 2  # -o: the input's folder
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert sha256(tmp_path / "clip.mkv") == before


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_stream_leaves_no_file(tmp_path, models, monkeypatch, error):
    import csd_fast.video.pipeline as pipeline

    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 8)
    real, calls = pipeline.upscale_rgb, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "upscale_rgb", failing)
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            cli([tmp_path / "clip.mkv"], tmp_path / "out", models[2][1], "--batch", "2")
    else:
        assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt, "--batch", "2") == 1
    assert list((tmp_path / "out").iterdir()) == []  # neither the final name nor a temporary file


def test_corrupt_files_are_one_line_errors_or_skipped(tmp_path, models, capsys):
    _, ckpt = models[2]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    make_video(tmp_path / "good.mp4", 18, 14, 6, codec="libx264")
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "in" / "cut.mp4").write_bytes(data[:len(data) // 2])
    for name in ("garbage.mp4", "cut.mp4"):
        assert cli([tmp_path / "in" / name], tmp_path / "out", ckpt) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("csd-fast upscale: error: ") and name in err
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "in" / "ok.png")
    assert cli([tmp_path / "in"], tmp_path / "out", ckpt, "--skip-unreadable") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"wrote 1 image(s) and 0 video(s) to {tmp_path / 'out'}; skipped 2 unreadable"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ok.png"]


def test_pyav_missing_is_one_clear_line(tmp_path, models, monkeypatch, capsys):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mp4", 18, 14, 2, codec="libx264")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    assert cli([tmp_path / "clip.mp4"], tmp_path / "out", ckpt) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'csd_fast[video]'" in err


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_upscale_frames_api(tmp_path, models, batch):
    model, _ = models[2]
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (13, 17, 3), dtype=np.uint8) for _ in range(4)]
    frames[1] = torch.from_numpy(frames[1])  # tensors too
    got = list(upscale_frames(model, iter(frames), batch=batch))
    assert len(got) == 4 and all(g.dtype == np.uint8 and g.shape == (26, 34, 3) for g in got)
    want = image_path_result(model, np.asarray(frames[2]), tmp_path, "f")
    np.testing.assert_array_equal(got[2], want)


def test_upscale_frames_says_what_it_takes(models):
    model, _ = models[2]
    with pytest.raises(ValueError, match="HxWx3 uint8 RGB"):
        list(upscale_frames(model, [np.zeros((8, 8, 3), np.float32)]))


def test_upscale_frames_stops_with_its_consumer(models):
    import threading

    model, _ = models[2]
    endless = (np.zeros((8, 8, 3), np.uint8) for _ in iter(int, 1))
    stream = upscale_frames(model, endless, batch=2)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("csd_fast-")]


def test_upscale_video_api_guards_its_output(tmp_path, models):
    model, _ = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 3)
    summary = upscale_video(model, tmp_path / "clip.mkv", tmp_path / "up.mkv", codec="ffv1", progress=False)
    assert summary.frames == 3 and summary.size == (36, 28)
    with pytest.raises(FileExistsError):
        upscale_video(model, tmp_path / "clip.mkv", tmp_path / "up.mkv", progress=False)
    with pytest.raises(ValueError, match="input"):
        upscale_video(model, tmp_path / "clip.mkv", tmp_path / "clip.mkv", overwrite=True, progress=False)


PEAK_RSS = textwrap.dedent("""
    import sys, torch
    from csd_fast import EDSRCSD, upscale_video
    torch.manual_seed(0)
    model = EDSRCSD(2, 1, 8, 1.0).eval()
    upscale_video(model, sys.argv[1], sys.argv[2], codec="ffv1", batch=4, progress=False)
    status = open("/proc/self/status").read()
    print(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_does_not_grow_with_length(tmp_path):
    peaks = []
    # the short clip (16 batches) fills every queue several times; 320 frames held at once
    # would add some 360 MB (input and output frames), far over 10% of the peak. Each length
    # runs twice and keeps its lower peak: one run's peak moves by some 30-100 MB with how
    # the allocator's arenas happen to fill (seen here and in CI), which is not the pipeline
    for n in (64, 320):
        make_video(tmp_path / f"c{n}.mkv", 320, 240, n)
        runs = []
        for attempt in range(2):
            done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / f"c{n}.mkv"),
                                   str(tmp_path / f"o{n}_{attempt}.mkv")], capture_output=True,
                                  text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs.append(int(done.stdout.split()[-1]))
        peaks.append(min(runs))
    print("peak RSS kB", peaks)
    assert peaks[1] <= peaks[0] * 1.10, peaks


def test_file_cut_short_mid_stream(tmp_path, models, capsys):
    """The index first (faststart), so the cut file opens and fails further in."""
    _, ckpt = models[2]
    make_video(tmp_path / "full.mp4", 32, 24, 30, codec="libx264", options={"movflags": "+faststart"})
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) * 2 // 3])
    assert cli([tmp_path / "cut.mp4"], tmp_path / "out", ckpt) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cut.mp4" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert cli([tmp_path / "cut.mp4"], tmp_path / "out", ckpt, "--skip-unreadable") == 0
    assert "skipped 1 unreadable video packet(s)" in capsys.readouterr().out
    assert 0 < len(decoded(tmp_path / "out" / "cut.mp4")[0]) < 30


def add_subtitles(path):
    """A copy of the ffv1 video at path with a SubRip track of one cue."""
    with av.open(str(path)) as src, av.open(str(path.with_name("sub.mkv")), "w") as out:
        video = out.add_stream_from_template(src.streams.video[0])
        text = out.add_mux_stream("subrip")
        text.time_base = TB
        cue = av.Packet(b"hello")
        cue.stream, cue.pts, cue.dts, cue.duration, cue.time_base = text, 0, 0, 200, TB
        out.mux(cue)
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = video
                out.mux(packet)
    return path.with_name("sub.mkv")


def test_subtitles_copied_or_dropped_with_a_warning(tmp_path, models, capsys):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 3)
    sub = add_subtitles(tmp_path / "clip.mkv")
    assert cli([sub], tmp_path / "mkv", ckpt) == 0
    with av.open(str(tmp_path / "mkv" / "sub.mkv")) as c:
        assert [bytes(p) for p in c.demux(subtitles=0) if p.dts is not None] == [b"hello"]
    assert cli([sub], tmp_path / "mp4", ckpt, "--container", "mp4") == 0  # MP4 takes no SubRip
    assert "dropped subtitle stream #1" in capsys.readouterr().err
    with av.open(str(tmp_path / "mp4" / "sub.mp4")) as c:
        assert not c.streams.subtitles and len(decoded(tmp_path / "mp4" / "sub.mp4")[0]) == 3


@pytest.mark.parametrize("extra, message", [
    (["--codec", "nosuchcodec"], "no such encoder"),
    (["--codec", "aac"], "not a video one"),
    (["--codec", "ffv1", "--crf", "20"], "--crf applies to"),
    (["--crf", "-5"], "--crf -5: libx264 takes 0 (best) to 51"),
    (["--crf", "52"], "--crf 52: libx264 takes 0 (best) to 51"),
    (["--container", "nosuchsuffix"], "no container for the suffix"),
])
def test_bad_codec_options_are_one_line_before_work(tmp_path, models, capsys, extra, message):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 2)
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_progress_bar_unless_quiet(tmp_path, models, capsys):
    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 3)
    args = ["upscale", str(tmp_path / "clip.mkv"), "--checkpoint", str(ckpt), "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert "frame/s" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_display_rotation_kept(tmp_path, models):
    _, ckpt = models[2]
    with av.open(str(tmp_path / "phone.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 16, "yuv420p"
        s.set_display_rotation(90)
        for i in range(2):
            f = av.VideoFrame.from_ndarray(np.zeros((16, 32, 3), np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 10)
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    assert cli([tmp_path / "phone.mp4"], tmp_path / "out", ckpt) == 0
    with av.open(str(tmp_path / "out" / "phone.mp4")) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height, frame.rotation) == (64, 32, 90)


def test_yuv_output_tagged_bt709_and_converted_by_it(tmp_path):
    """A saturated flat colour written as yuv420p (libx264, crf 0) decodes back to itself,
    give or take rounding, which holds only when the conversion and the tag agree."""
    from csd_fast.video.writer import VideoWriter

    make_video(tmp_path / "src.mkv", 16, 16, 1)
    colour = np.tile(np.uint8([200, 40, 60]), (16, 16, 1))
    with av.open(str(tmp_path / "src.mkv")) as source:
        writer = VideoWriter(tmp_path / "out.mkv", source, 16, 16, crf=0)
        writer.write(colour, 0, TB)
        writer.close()
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].codec_context.colorspace == 1  # BT.709
    back = decoded(tmp_path / "out.mkv")[0][0]
    assert np.abs(back.astype(int) - colour).max() <= 2


def test_an_encoder_failure_is_one_line_and_leaves_no_file(tmp_path, models, capsys, monkeypatch):
    from csd_fast.video import writer

    def fails(self, *args):
        raise av.error.ExternalError(542398533, "injected encoder failure")

    _, ckpt = models[2]
    make_video(tmp_path / "clip.mkv", 18, 14, 3)
    monkeypatch.setattr(writer.VideoWriter, "write", fails)
    assert cli([tmp_path / "clip.mkv"], tmp_path / "out", ckpt) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FFmpeg could not write the video" in err[0], err
    assert not list((tmp_path / "out").iterdir())
