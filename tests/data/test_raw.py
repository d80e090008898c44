import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from harness.data import raw
from harness.data.raw import RawSample


def png_bytes(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def make_samples(n: int) -> list[RawSample]:
    return [RawSample(f"{i:09d}", png_bytes(4 + i, 5), "png", f"caption {i} \u00e9", {"url": f"http://x/{i}"})
            for i in range(n)]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_round_trip_keeps_key_caption_and_image_bytes(tmp_path):
    samples = make_samples(5)
    paths = raw.write_raw_shards(samples, tmp_path, "train", shard_size=2)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert not list(tmp_path.glob("*.partial"))
    got = [s for p in paths for s in raw.read_raw_shard(p)]
    assert [(s.key, s.caption, s.image, s.image_ext) for s in got] == \
        [(s.key, s.caption, s.image, s.image_ext) for s in samples]
    assert got[0].meta == {"key": "000000000", "caption": "caption 0 \u00e9", "url": "http://x/0", "status": "success"}


def test_shards_are_byte_identical_when_rewritten(tmp_path):
    first = raw.write_raw_shards(make_samples(3), tmp_path / "a", "train", 2)
    second = raw.write_raw_shards(make_samples(3), tmp_path / "b", "train", 2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_keys_with_dots_or_duplicates_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no '.'"):
        raw.write_raw_shards([RawSample("a.b", None, "", "c", {})], tmp_path, "x", 4)
    with pytest.raises(ValueError, match="duplicate"):
        raw.write_raw_shards([RawSample("a", None, "", "c", {})] * 2, tmp_path, "y", 4)
    assert not list(tmp_path.iterdir())  # neither a final nor a .partial shard is left behind


def test_reads_img2dataset_layout_and_falls_back_to_json_caption(tmp_path):
    path = tmp_path / "00000.tar"
    jpg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpg, format="JPEG")
    with tarfile.open(path, "w") as tar:
        add_member(tar, "000000000.jpg", jpg.getvalue())
        add_member(tar, "000000000.txt", b"a dog on a beach")
        add_member(tar, "000000000.json", json.dumps({"caption": "ignored", "url": "u0", "status": "success"}).encode())
        add_member(tar, "000000001.webp", b"webp-bytes")
        add_member(tar, "000000001.json", json.dumps({"caption": "from json", "url": "u1"}).encode())
    first, second = raw.read_raw_shard(path)
    assert (first.key, first.caption, first.image_ext, first.image) == \
        ("000000000", "a dog on a beach", "jpg", jpg.getvalue())
    assert first.meta["url"] == "u0"
    assert (second.key, second.caption, second.image_ext, second.image) == \
        ("000000001", "from json", "webp", b"webp-bytes")


def shard_offsets(path):
    """Cut points inside a two-sample shard: (name, byte offset)."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        end = tar.offset  # first byte after the last member: the end-of-archive marker
    last = members[-1]
    return {"mid-data": last.offset_data + 3, "mid-header": last.offset + 100,
            "between-members": last.offset, "no-end-marker": end}


@pytest.mark.parametrize("where", ["mid-data", "mid-header", "between-members", "no-end-marker"])
def test_truncated_shard_is_refused_naming_the_file(tmp_path, where):
    (path,) = raw.write_raw_shards(make_samples(2), tmp_path, "train", 8)
    path.write_bytes(path.read_bytes()[:shard_offsets(path)[where]])
    with pytest.raises(ValueError, match=str(path)):
        list(raw.read_raw_shard(path))


def test_empty_shard_reads_as_no_samples(tmp_path):
    path = tmp_path / "empty.tar"
    raw._write_tar([], path)
    assert list(raw.read_raw_shard(path)) == []


def test_list_raw_shards_forms(tmp_path):
    paths = raw.write_raw_shards(make_samples(3), tmp_path, "s", 1)
    (tmp_path / "notes.txt").write_text("not a shard")
    assert raw.list_raw_shards(str(tmp_path)) == paths
    assert raw.list_raw_shards(f"file://{tmp_path}") == paths
    assert raw.list_raw_shards(f"{tmp_path}/s-{{000000..000002}}.tar") == paths
    assert raw.list_raw_shards(f"file://{tmp_path}/s-{{000001..000002}}.tar") == paths[1:]
    with pytest.raises(FileNotFoundError, match="s-000003.tar"):
        raw.list_raw_shards(f"{tmp_path}/s-{{000000..000003}}.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar"):
        raw.list_raw_shards(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="file://"):
        raw.list_raw_shards("s3://bucket/{0..1}.tar")


def test_build_shapes_raw_gives_decodable_jpegs_of_the_right_size(tmp_path):
    paths = raw.build_shapes_raw(tmp_path / "a", "train", count=5, image_size=32, seed=3, shard_size=2)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    samples = [s for p in paths for s in raw.read_raw_shard(p)]
    assert [s.key for s in samples] == [f"train-{i:08d}" for i in range(5)]
    for s in samples:
        image = Image.open(io.BytesIO(s.image))
        assert (image.format, image.size, image.mode, s.image_ext) == ("JPEG", (32, 32), "RGB", "jpg")
        assert " on a " in s.caption
    again = raw.build_shapes_raw(tmp_path / "b", "train", count=5, image_size=32, seed=3, shard_size=2)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def write_url_list(tmp_path):
    """Six rows: four PNGs (one wide with a green centre, to check the crop), one text file and
    one missing file."""
    src = tmp_path / "src"
    src.mkdir()
    wide = Image.new("RGB", (96, 48), (255, 0, 0))
    wide.paste((0, 255, 0), (24, 0, 72, 48))  # the central 48x48 square is green, the sides red
    wide.save(src / "wide.png")
    for i, colour in enumerate([(0, 0, 255), (255, 255, 0), (0, 255, 255)]):
        Image.new("RGB", (20 + i, 40), colour).save(src / f"img{i}.png")
    (src / "notes.png").write_text("this is not an image")
    rows = [("wide.png", "wide one"), ("img0.png", "blue"), ("notes.png", "broken"),
            ("missing.png", "gone"), ("img1.png", 'a "quoted" yellow'), ("img2.png", "cyan")]
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("".join(f"{(src / name).as_uri()}\t{caption}\n" for name, caption in rows))
    return url_list, src


def test_download_writes_good_rows_in_order_and_counts_failures(tmp_path):
    url_list, _ = write_url_list(tmp_path)
    out = tmp_path / "out"
    report = raw.download(url_list, out, image_size=16, shard_size=4, processes=3, columns=("url", "caption"))
    assert report["rows"] == 6 and report["written"] == 4
    assert report["failed"] == {"decode_error": 1, "fetch_error": 1}
    assert report["shards"] == ["raw-000000.tar", "raw-000001.tar"]
    assert json.loads((out / raw.REPORT).read_text()) == report
    samples = [s for p in raw.list_raw_shards(str(out)) for s in raw.read_raw_shard(p)]
    assert [(s.key, s.caption) for s in samples] == [
        ("000000000", "wide one"), ("000000001", "blue"), ("000000004", 'a "quoted" yellow'), ("000000005", "cyan")]
    pixels = [np.asarray(Image.open(io.BytesIO(s.image))) for s in samples]
    assert all(p.shape == (16, 16, 3) for p in pixels)
    assert np.abs(pixels[0].astype(int) - (0, 255, 0)).max() < 30  # the crop kept only the green centre
    assert np.abs(pixels[1].astype(int) - (0, 0, 255)).max() < 30
    assert samples[0].meta["original_width"] == 96 and samples[0].meta["url"].startswith("file://")


def test_download_with_header_row(tmp_path):
    url_list, _ = write_url_list(tmp_path)
    url_list.write_text("caption\turl\n" + "".join(
        f"{c}\t{u}\n" for u, c in (line.split("\t") for line in url_list.read_text().splitlines())))
    report = raw.download(url_list, tmp_path / "out", image_size=8, shard_size=10)
    assert (report["rows"], report["written"], report["shards"]) == (6, 4, ["raw-000000.tar"])
    with pytest.raises(ValueError, match="columns"):
        raw.download(url_list, tmp_path / "bad", image_size=8, shard_size=10, columns=("a", "b"))


def test_second_download_skips_existing_shards(tmp_path):
    url_list, src = write_url_list(tmp_path)
    out = tmp_path / "out"
    first = raw.download(url_list, out, image_size=16, shard_size=4, columns=("url", "caption"))
    assert first["written"] == 4 and first["resumed_shards"] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    for image in src.iterdir():
        image.unlink()  # anything fetched again would now fail
    (out / "raw-000001.tar").unlink()  # as if the run had died while writing the second shard
    second = raw.download(url_list, out, image_size=16, shard_size=4, columns=("url", "caption"))
    assert second["resumed_shards"] == 1
    assert (out / "raw-000000.tar").read_bytes() == before["raw-000000.tar"]
    assert second["rows"] == 6 and second["written"] == 2  # shard 0's counts come from its sidecar
    assert second["failed"] == {"decode_error": 1, "fetch_error": 3}
    third = raw.download(url_list, out, image_size=16, shard_size=4, columns=("url", "caption"))
    assert third["resumed_shards"] == 2 and third == {**second, "resumed_shards": 2}


def test_center_crop_upscales_small_images():
    image = raw.center_crop(Image.new("RGB", (10, 4)), 16)
    assert image.size == (16, 16)


def test_download_over_http_counts_http_errors_and_timeouts(tmp_path):
    """A local HTTP server (still offline): 200, 404 and a response slower than the timeout."""
    import http.server
    import threading
    import time

    body = png_bytes(12, 12)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow.png":
                time.sleep(1.0)
            if self.path == "/missing.png":
                self.send_error(404)
                return
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up on /slow.png: expected
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        url_list = tmp_path / "urls.tsv"
        url_list.write_text(f"url\tcaption\n{base}/ok.png\tok\n{base}/missing.png\tgone\n"
                            f"{base}/slow.png\tslow\nftp://example.invalid/x.png\tftp\n")
        report = raw.download(url_list, tmp_path / "out", image_size=8, shard_size=8, timeout_s=0.3)
    finally:
        server.shutdown()
        server.server_close()
    assert report["written"] == 1
    assert report["failed"] == {"http_error": 1, "timeout": 1, "unsupported_url": 1}
