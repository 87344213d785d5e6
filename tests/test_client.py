"""The Python client: Arrow by default with the same numbers as JSON, JSON when refused, and a light install alone."""

import json
import math
import subprocess
import sys
import textwrap
import typing
import venv
from urllib.parse import unquote

import httpx
import numpy as np
import pytest

import client as client_module
from client import AmortizedClient, ApiError, InvalidAnswer
from service.schemas import SUMMARY_SOURCES
from tests.conftest import ARTIFACTS, ROOT
from tests.launch import start_server, stop_server

SERVER_ONLY = ("torch", "numba", "matplotlib", "scipy", "fastapi")


class RefusesArrow(httpx.BaseTransport):
    """A server that answers JSON only: 406 to an Arrow Accept, the app's own answer otherwise."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.refused = inner, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if client_module.ARROW in request.headers.get("accept", ""):
            self.refused += 1
            detail = [{"loc": ["header", "accept"], "msg": "only application/json", "type": "not_acceptable"}]
            return httpx.Response(406, json={"detail": detail})
        return self.inner.handle_request(request)


class Recording(httpx.BaseTransport):
    """The app's own answers, noting each request's path and Accept-Encoding and its answer's Content-Encoding."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.seen = inner, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.seen.append(
            (request.url.raw_path, request.headers.get("accept-encoding"), response.headers.get("content-encoding"))
        )
        return response


def same(a, b) -> None:
    """Equal arrays of the same dtype, floats to the bit (NaN where the other has NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a, b)
    if a.dtype.kind == "f":
        assert a.tobytes() == b.tobytes()
    else:
        assert a.tolist() == b.tolist()


@pytest.fixture(scope="module")
def live_url():
    """A real server (``python -m service``) on the committed artifacts, as clients elsewhere meet it."""
    process, url = start_server({"AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS)})
    yield url
    stop_server(process)


def test_arrow_and_json_give_the_client_the_same_arrays(client):
    body = dict(objective="both", num_samples=300, seed=6, resample=True)
    y = [0.5, -9.0, 2.7]
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as arrow_api:
        assert arrow_api.format == "arrow"
        arrow = arrow_api.posterior_arrays("gmm_open", y, **body)
        arrow_rows = arrow_api.posterior("gmm_open", y, **body)
    with AmortizedClient(transport=client._transport, base_url="http://testserver", format="json") as json_api:
        plain = json_api.posterior_arrays("gmm_open", y, **body)
        plain_rows = json_api.posterior("gmm_open", y, **body)
    for objective in ("pq", "qp"):
        a, b = arrow[objective], plain[objective]
        assert a.x.shape == (3, 300) and np.isnan(a.latents["z"][a.latents["k"] == 1]).all()
        for name in ("y", "seeds", "branch_probabilities", "branch_means", "branch_stds", "x", "log_weights"):
            same(getattr(a, name), getattr(b, name))
        for group in ("latents", "resampled", "diagnostics", "exact"):
            assert list(getattr(a, group)) == list(getattr(b, group)), group
            for key in getattr(a, group):
                same(getattr(a, group)[key], getattr(b, group)[key])
        assert a.versions == b.versions and a.branch_latents == b.branch_latents
        for ours, theirs in zip(arrow_rows, plain_rows):
            assert ours[objective].diagnostics == theirs[objective].diagnostics
            assert ours[objective].exact == theirs[objective].exact
            same(ours[objective].x, theirs[objective].x)
            assert type(ours[objective].seed) is int and ours[objective].seed == theirs[objective].seed
            assert theirs[objective].raw["seed"] == theirs[objective].seed  # the JSON result itself, in JSON mode
        assert [row[objective].seed for row in arrow_rows] == a.seeds.tolist()


def test_arrow_columns_read_alike_in_one_chunk_or_several_and_versions_name_the_networks_that_answered(client):
    """One chunk is read without a copy, several are joined; a network that took no part is left out of versions."""
    import pyarrow as pa

    body = {"y": [0.5, -3.0, 8.0], "objective": "pq", "num_samples": 50, "seed": 2, "cross_check": False}
    response = client.post("/v1/models/gmm/posterior", json=body, headers={"accept": client_module.ARROW})
    table = pa.ipc.open_stream(response.content).read_all()
    whole = client_module.PosteriorArrays.from_arrow(table)
    chunked = client_module.PosteriorArrays.from_arrow(pa.concat_tables([table.slice(0, 1), table.slice(1)]))
    assert table.column("log_weights").num_chunks == 1 and np.shares_memory(
        whole.log_weights, np.frombuffer(table.column("log_weights").chunk(0).values.buffers()[1], np.float64)
    )
    version = client.get("/v1/models/gmm").json()["versions"]["pq"]
    assert whole.versions == chunked.versions == [{"pq": version}] * 3
    for name in ("x", "log_weights", "y"):
        same(getattr(whole, name), getattr(chunked, name))
    for key in whole.diagnostics:
        same(whole.diagnostics[key], chunked.diagnostics[key])


def test_summaries_reach_the_client_as_columns(client):
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as api:
        columns = api.posterior_arrays("gmm", [0.0, 3.0], num_samples=0, include=["summary", "summary.exact"])
        assert columns.x is None and set(columns.summary) >= {"q.quantiles.0.5", "exact.intervals.0.95"}
        assert columns.summary["exact.intervals.0.95"].shape == (2, 2)
        one = api.posterior("gmm", 0.0, num_samples=100, seed=1, include=list(SUMMARY_SOURCES))
        assert set(one.summary) == {"q", "weighted", "exact"} and one.x.size == 0


def test_both_formats_give_the_same_summary_arrays(client):
    """Every summary column (quantiles, (observations, 2) intervals, discrete probabilities) alike in dtype and bits."""
    body = dict(objective="both", num_samples=200, seed=9, include=["summary", *SUMMARY_SOURCES])
    with (
        AmortizedClient(transport=client._transport, base_url="http://testserver") as arrow_api,
        AmortizedClient(transport=client._transport, base_url="http://testserver", format="json") as json_api,
    ):
        for model, y in (("gmm_open", [0.5, -9.0, 30.0]), ("gaussian", [1.0, 4.0]), ("gmm_discrete", 2.0)):
            arrow, plain = arrow_api.posterior_arrays(model, y, **body), json_api.posterior_arrays(model, y, **body)
            rows = np.size(y)
            for objective in ("pq", "qp"):
                a, b = arrow[objective].summary, plain[objective].summary
                assert list(a) == list(b) and "weighted.intervals.0.8" in a, (model, list(a), list(b))
                for key in a:
                    same(a[key], b[key])
                    assert a[key].dtype == np.float64, (model, key, a[key].dtype)
                    assert a[key].shape == ((rows, 2) if ".intervals." in key else (rows,)), (model, key)
                # the arrays hold the answer's own numbers: the JSON rows, read without the client
                answer = client.post(f"/v1/models/{model}/posterior", json={"y": y, **body}).json()
                results = answer.get("results", [answer])
                exact = [r["objectives"][objective]["summary"]["exact"]["intervals"]["0.95"] for r in results]
                assert b["exact.intervals.0.95"].tolist() == exact


def test_json_interval_columns_read_as_arrow_reads_them():
    """Null bounds are NaN in both readings; a null interval (which no answer holds yet) is a row of NaN in JSON's."""
    import pyarrow as pa

    values = [[1.5, None], [-2.0, 3.25], [None, None]]
    arrow = client_module._numpy(pa.array(values, type=pa.list_(pa.float64(), 2)), 3)
    same(client_module._json_column(values), arrow)
    same(client_module._json_column([[1.0, 2.0], None]), np.array([[1.0, 2.0], [math.nan, math.nan]]))


def test_model_names_reach_the_server_as_one_path_segment(live_url):
    """Whatever a name holds, the request goes to that name's own path: an unknown model is a 404, not another one.

    Against a real server: Starlette's TestClient decodes a path twice ("%2567mm" would reach the app as "gmm").
    """
    names = ("gmm#frag", "gmm?x=1", "..", ".", "%67mm", "a b", "gmm%2F..%2Fgaussian", "gmm\\..\\gaussian", "gmm;x")
    transport = Recording(httpx.HTTPTransport())
    for format in ("arrow", "json"):
        with AmortizedClient(live_url, transport=transport, format=format) as api:
            assert api.model("gmm")["name"] == "gmm" and api.posterior("gmm", 0.5, num_samples=5).x.shape == (5,)
            for name in names:
                for method, args in (("model", ()), ("posterior", (0.0, "qp", 5)), ("posterior_arrays", ([0.0, 1.0],))):
                    transport.seen.clear()
                    with pytest.raises(ApiError) as raised:
                        getattr(api, method)(name, *args)
                    assert raised.value.status == 404, (name, raised.value)
                    assert f"unknown model {name!r}" in raised.value.detail[0]["msg"], raised.value.detail
                    path = transport.seen[-1][0].decode("ascii").split("/")
                    assert path[:3] == ["", "v1", "models"] and unquote(path[3]) == name, (name, path)
                    assert path[4:] == ([] if method == "model" else ["posterior"]), (name, path)
            # the server decodes %2F before routing ("gmm/" would be redirected to gmm): no segment carries a "/"
            for name in ("", "gmm/../gaussian", "gmm/", "/gmm", "\ud800", "gmm\udfff"):  # no UTF-8 for a surrogate
                for method, args in (("model", ()), ("posterior", (0.0,)), ("posterior_arrays", ([0.0],))):
                    transport.seen.clear()
                    with pytest.raises(ValueError, match="cannot be a URL path segment"):
                        getattr(api, method)(name, *args)
                    assert transport.seen == [], name  # refused before anything is sent


def test_an_answer_that_is_not_a_success_raises_api_error(client):
    """A redirect (not followed) holds no answer: an ApiError with its status, as a 4xx would be."""

    class Redirects(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(307, headers={"location": "http://testserver/elsewhere"})

    with AmortizedClient(transport=Redirects(), base_url="http://testserver") as api:
        for call in (api.models, lambda: api.model("gmm"), lambda: api.posterior("gmm", 0.0)):
            with pytest.raises(ApiError) as raised:
                call()
            assert raised.value.status == 307 and raised.value.detail == "Temporary Redirect", raised.value


def test_numpy_observations_and_options_are_sent_as_their_values(client):
    """NumPy scalars and 0-d/1-d arrays of several dtypes answer as the Python numbers they hold."""
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as api:

        def check(y, reference, batch):
            ours = api.posterior_arrays("gmm_open", y, num_samples=np.int64(40), seed=np.uint32(11), resample=np.True_)
            theirs = api.posterior_arrays("gmm_open", reference, num_samples=40, seed=11, resample=True)
            assert ours.y.tolist() == (reference if batch else [reference]), (y, ours.y)
            for name in ("x", "log_weights", "seeds"):
                same(getattr(ours, name), getattr(theirs, name))
            same(ours.resampled["x"], theirs.resampled["x"])
            one = api.posterior("gmm_open", y, num_samples=np.int32(5), seed=np.int16(3))
            assert isinstance(one, list) == batch, (y, type(one))

        for dtype in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8):
            values = np.array([0.5, 3.0, 8.25], dtype=dtype)  # integers: [0, 3, 8]
            reference = [float(v) if values.dtype.kind == "f" else int(v) for v in values]
            check(values, reference, batch=True)
            check(values[1:2], reference[1:2], batch=True)
            check(values[2], reference[2], batch=False)  # a NumPy scalar
            check(np.array(values[2]), reference[2], batch=False)  # a 0-d array
            check(list(values), reference, batch=True)  # a list of NumPy scalars
        assert float(np.float32(0.1)) != 0.1  # float32 values are sent as the float64 they equal, not re-rounded
        check(np.array([0.1], dtype=np.float32), [float(np.float32(0.1))], batch=True)

        for shaped in (np.zeros((2, 3)), np.zeros((1, 1)), np.zeros((2, 1, 1))):
            with pytest.raises(ValueError, match=rf"shape \({shaped.shape[0]}, "):
                api.posterior_arrays("gmm", shaped)
        with pytest.raises(ValueError, match="list holding lists"):
            api.posterior("gmm", [np.array([1.0, 2.0])])
        # values the server refuses as it refuses Python's: non-finite, beyond +-1e9, booleans
        for numpy_y, python_y in (
            (np.array([0.0, np.nan]), [0.0, math.nan]),
            (np.float32(np.inf), math.inf),
            (np.array([-np.inf]), [-math.inf]),
            (np.float64(2e9), 2e9),
            (np.array([True, False]), [True, False]),
        ):
            details = []
            for y in (numpy_y, python_y):
                with pytest.raises(ApiError) as raised:
                    api.posterior("gmm", y, num_samples=5)
                assert raised.value.status == 422, raised.value
                details.append(raised.value.detail)
            assert details[0] == details[1] and details[0][0]["loc"][:2] == ["body", "y"], details


def test_compress_accepts_what_httpx_decodes_and_reads_the_same_arrays(client):
    """Here httpx decodes zstd (zstandard is installed with the server): the client asks for it and reads it."""
    transport = Recording(client._transport)
    y = [0.0, 1.0, 2.0]
    for format in ("arrow", "json"):
        with (
            AmortizedClient(transport=transport, base_url="http://testserver", format=format) as plain,
            AmortizedClient(transport=transport, base_url="http://testserver", format=format, compress=True) as packed,
        ):
            transport.seen.clear()
            a = plain.posterior_arrays("gmm", y, num_samples=500, seed=5)
            b = packed.posterior_arrays("gmm", y, num_samples=500, seed=5)
            assert [seen[1:] for seen in transport.seen] == [("identity", None), ("zstd, gzip", "zstd")]
            for name in ("x", "log_weights", "y"):
                same(getattr(a, name), getattr(b, name))
    with AmortizedClient(
        transport=transport, base_url="http://testserver", compress=True, headers={"Accept-Encoding": "gzip"}
    ) as mine:
        transport.seen.clear()
        mine.posterior_arrays("gmm", y, num_samples=500)
        assert [seen[1:] for seen in transport.seen] == [("gzip", "gzip")]  # the caller's header wins


def compressed_answers_script(url: str) -> str:
    """Python that asks for compressed and plain answers in both formats and prints the codings and the equality."""
    return textwrap.dedent(
        f"""
        import json
        import httpx
        from client import AmortizedClient
        seen = []
        record = lambda r: seen.append([r.request.headers["accept-encoding"], r.headers.get("content-encoding")])
        alike = []
        for format in ("arrow", "json"):
            with (
                AmortizedClient({url!r}, format=format) as plain,
                AmortizedClient({url!r}, format=format, compress=True, event_hooks={{"response": [record]}}) as packed,
            ):
                a = plain.posterior_arrays("gmm", [0.0, 1.0, 2.0], num_samples=500, seed=5)
                b = packed.posterior_arrays("gmm", [0.0, 1.0, 2.0], num_samples=500, seed=5)
                alike.append(a.x.tobytes() == b.x.tobytes() and a.log_weights.tobytes() == b.log_weights.tobytes())
        with httpx.Client() as default:
            decodes = default.headers["accept-encoding"]
        print(json.dumps({{"decodes": decodes, "seen": seen, "alike": alike}}))
        """
    )


def check_gzip_without_zstd(ran: subprocess.CompletedProcess) -> None:
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout.splitlines()[-1])
    assert "zstd" not in out["decodes"] and "gzip" in out["decodes"], out  # httpx here cannot decode zstd
    assert out["seen"] == [["gzip", "gzip"]] * 2 and out["alike"] == [True, True], out


def test_compress_without_zstandard_asks_for_gzip_only(live_url):
    """httpx decodes zstd only with the zstandard package: without it, the client must not ask the server for zstd."""
    prelude = 'import sys\nsys.modules["zstandard"] = None  # as if not installed (the light install has none)\n'
    script = prelude + compressed_answers_script(live_url)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    check_gzip_without_zstd(ran)


@pytest.mark.parametrize("answer_format", ["arrow", "json"])
@pytest.mark.parametrize("y", [1.5, [1.5, -4.0]])
def test_a_drawn_seed_is_on_each_posterior_and_replays_its_answer(client, answer_format, y):
    """Without a seed the server draws one; each Posterior carries its observation's (Arrow answers held it only in
    posterior_arrays(...).seeds), and asking again with it gives the same draws."""
    with AmortizedClient(transport=client._transport, base_url="http://testserver", format=answer_format) as api:
        answers = api.posterior("gmm_open", y, num_samples=30)
        rows = answers if isinstance(y, list) else [answers]
        for value, row in zip(np.atleast_1d(y), rows, strict=True):
            assert type(row.seed) is int and 0 <= row.seed < 2**53, row.seed
            again = api.posterior("gmm_open", float(value), num_samples=30, seed=row.seed)
            assert again.seed == row.seed
            same(again.x, row.x)
            same(again.log_weights, row.log_weights)


def test_a_server_that_refuses_arrow_is_asked_in_json(client):
    transport = RefusesArrow(client._transport)
    with AmortizedClient(transport=transport, base_url="http://testserver") as api:
        answer = api.posterior("gmm", 0.0, num_samples=50, seed=2)
        again = api.posterior("gmm", 1.0, num_samples=50, seed=2)
    assert transport.refused == 1 and api.format == "json"
    assert answer.x.shape == again.x.shape == (50,)


@pytest.fixture(scope="module")
def light_client(tmp_path_factory):
    """A fresh virtualenv with ``pip install ./client`` and nothing else; skipped only if the index is unreachable."""
    folder = tmp_path_factory.mktemp("light") / "venv"
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if installed.returncode != 0:
        unreachable = ("Could not find a version", "No matching distribution", "connection", "Network", "resolve")
        if any(word in installed.stderr for word in unreachable):
            pytest.skip(f"the package index is unreachable: {installed.stderr.strip().splitlines()[-1]}")
        raise AssertionError(installed.stderr)
    return python


def test_the_client_installs_alone_without_the_servers_dependencies(light_client):
    listed = subprocess.run(
        [light_client, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"amortized-client", "httpx", "numpy", "pyarrow"} <= names
    assert not names & set(SERVER_ONLY), names & set(SERVER_ONLY)


def test_the_light_client_reads_arrow_from_a_real_server(light_client, live_url, tmp_path):
    url = live_url
    script = textwrap.dedent(
        f"""
        import sys
        from client import AmortizedClient
        assert "torch" not in sys.modules
        with AmortizedClient({url!r}) as api:
            columns = api.posterior_arrays("gmm_discrete", [-8.0, 0.5, 12.0], num_samples=200, seed=3)
            print(api.format, columns.x.shape, columns.diagnostics["verdict"].tolist(), "torch" in sys.modules)
        """
    )
    # run from an empty folder, so that the checkout's own client/ is not what gets imported
    ran = subprocess.run([light_client, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    words = ran.stdout.split()
    assert words[:3] == ["arrow", "(3,", "200)"] and words[-1] == "False", ran.stdout


def test_the_light_client_reads_compressed_answers_without_zstandard(light_client, live_url, tmp_path):
    """The light install has no zstandard, so its httpx cannot decode zstd: compress=True must still read answers."""
    absent = subprocess.run([light_client, "-c", "import zstandard"], capture_output=True, text=True, cwd=tmp_path)
    assert absent.returncode != 0 and "zstandard" in absent.stderr, absent
    script = compressed_answers_script(live_url)
    ran = subprocess.run([light_client, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    check_gzip_without_zstd(ran)


def test_the_checkout_runs_the_client_it_installs():
    assert client_module.__file__.startswith(str(ROOT / "client")), client_module.__file__
    assert sys.modules["client"] is client_module


def test_numpy_values_json_cannot_hold_are_refused_before_sending_and_long_doubles_rounded():
    from client import plain

    assert plain(np.array([1.5, 2.25], dtype=np.longdouble)) == [1.5, 2.25]
    assert type(plain(np.longdouble(0.1))) is float and plain(np.longdouble(0.1)) == float(np.longdouble(0.1))
    for value in (
        np.array([1 + 2j]),
        np.complex128(1),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.timedelta64(3, "s"),
        np.array([b"1.5"]),
        np.array([1.5], dtype=object),
    ):
        with pytest.raises(ValueError, match="not a real number"):
            plain(value)
    assert plain(np.array(["pq"])) == ["pq"]  # text stays text


class Rechunked(httpx.BaseTransport):
    """The app's answers, their bodies sent in chunks of ``size`` bytes, ``cut`` bytes short or ``extra`` long,
    with the app's own headers (its Content-Length)."""

    def __init__(self, inner: httpx.BaseTransport, size: int, cut: int = 0, extra: bytes = b"") -> None:
        self.inner, self.size, self.cut, self.extra = inner, size, cut, extra

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()
        body = body[: len(body) - self.cut] + self.extra
        chunks = [body[i : i + self.size] for i in range(0, len(body), self.size)]
        return httpx.Response(response.status_code, headers=response.headers, stream=ChunkStream(chunks))


class ChunkStream(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self):
        yield from self.chunks


def test_an_arrow_answer_is_read_into_one_buffer_of_its_announced_length(client):
    """Chunk by chunk into a buffer of the Content-Length: the arrays of a whole read; a body that is shorter or
    longer than announced is refused, never read as an answer."""
    import pyarrow as pa

    body = dict(objective="pq", num_samples=200, seed=4)
    y = [0.5, -3.0, 8.0]
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as api:
        whole = api.posterior_arrays("gmm_open", y, **body)
        response = api._http.post(
            "/v1/models/gmm_open/posterior", json={"y": y, **body}, headers={"accept": client_module.ARROW}
        )
    for size in (1, 1000, 65536):
        with AmortizedClient(transport=Rechunked(client._transport, size), base_url="http://testserver") as api:
            chunked = api.posterior_arrays("gmm_open", y, **body)
            with api._http.stream(
                "POST", "/v1/models/gmm_open/posterior", json={"y": y, **body}, headers={"accept": client_module.ARROW}
            ) as streamed:
                buffer = client_module.read_into_buffer(streamed)
        assert isinstance(buffer, pa.Buffer) and buffer.to_pybytes() == response.content
        for name in ("y", "seeds", "x", "log_weights", "branch_means"):
            same(getattr(chunked, name), getattr(whole, name))
    for wrong in (dict(cut=10), dict(cut=1), dict(extra=b"\0" * 7)):
        with (
            AmortizedClient(transport=Rechunked(client._transport, 4096, **wrong), base_url="http://testserver") as api,
            pytest.raises(httpx.RemoteProtocolError, match="Content-Length|ended after"),
        ):
            api.posterior_arrays("gmm_open", y, **body)


class Replays(httpx.BaseTransport):
    """The app's answer read whole and handed back as an httpx Response built from its bytes (how mocks are made),
    with ``headers`` over the app's own (a Content-Length, a Content-Type), or ``status`` and ``content`` instead."""

    def __init__(self, inner: httpx.BaseTransport, headers=None, status=None, content=None) -> None:
        self.inner, self.headers, self.status, self.content = inner, headers or {}, status, content

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.status is not None:
            return httpx.Response(self.status, content=self.content)
        response = self.inner.handle_request(request)
        body = response.read()
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-encoding")}
        return httpx.Response(response.status_code, headers=headers | self.headers, content=body)


def test_odd_answers_a_client_meets_behind_mocks_and_proxies(client):
    """A response already read (a mock), a Content-Length too large to reserve, an answer in JSON to a request for
    Arrow, an error body that is not the server's object: each read or refused in the client's own terms."""
    body = dict(objective="qp", num_samples=40, seed=9)
    y = [0.5, -3.0]
    with AmortizedClient(transport=client._transport, base_url="http://testserver", format="json") as api:
        reference = api.posterior_arrays("gmm_open", y, **body)
    read_already = Replays(client._transport)
    with AmortizedClient(transport=read_already, base_url="http://testserver") as api:
        arrays = api.posterior_arrays("gmm_open", y, **body)  # no StreamConsumed
        assert api.format == "arrow"
    for name in ("y", "x", "log_weights", "branch_means"):
        same(getattr(arrays, name), getattr(reference, name))
    too_large = Replays(client._transport, headers={"content-length": str(2**50)})  # 2**50 bytes not reserved ahead
    with (
        AmortizedClient(transport=too_large, base_url="http://testserver") as api,
        pytest.raises(httpx.RemoteProtocolError, match="not its Content-Length"),
    ):
        api.posterior_arrays("gmm_open", y, **body)

    class IgnoresAccept(httpx.BaseTransport):  # answers JSON whatever Accept asks
        def __init__(self) -> None:
            self.accepts = []

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            self.accepts.append(request.headers["accept"])
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"accept"] + [(b"accept", b"*/*")]
            plain = httpx.Request(request.method, request.url, headers=headers, content=request.read())
            return client._transport.handle_request(plain)

    ignores = IgnoresAccept()
    with AmortizedClient(transport=ignores, base_url="http://testserver") as api:
        arrays = api.posterior_arrays("gmm_open", y, **body)  # its JSON read as it came: not asked again
        assert api.format == "json" and ignores.accepts == [client_module.ARROW]
        api.posterior_arrays("gmm_open", y, **body)  # from then on in JSON
        assert ignores.accepts[1:] == ["application/json"]
    same(arrays.x, reference.x)
    for status, content in ((422, b"[1, 2]"), (502, b"<html>bad gateway</html>"), (500, b"")):
        failing = Replays(None, status=status, content=content)
        with AmortizedClient(transport=failing, base_url="http://t") as api, pytest.raises(ApiError) as raised:
            api.posterior_arrays("gmm", y)
        assert raised.value.status == status and raised.value.detail in (
            content.decode(),
            httpx.codes.get_reason_phrase(status),
        )


@pytest.mark.parametrize("cross_check", [False, True])
def test_diagnostics_have_the_same_columns_in_both_formats_with_or_without_the_cross_check(client, cross_check):
    body = dict(objective="pq", num_samples=20, seed=3, cross_check=cross_check)
    found = {}
    for fmt in ("arrow", "json"):
        with AmortizedClient(transport=client._transport, base_url="http://testserver", format=fmt) as api:
            found[fmt] = api.posterior_arrays("gmm", [0.1, 0.2], **body).diagnostics
    assert list(found["arrow"]) == list(found["json"])
    assert ("cross_check" in found["json"]) == (not cross_check)  # JSON's null: one column
    for key in found["json"]:
        same(found["arrow"][key], found["json"][key])


@pytest.mark.parametrize("y", [{0.1, 0.2}, (v for v in [0.1]), frozenset([1.0]), range(3).__iter__(), object()])
def test_a_y_with_no_order_or_no_length_is_refused_naming_y(client, y):
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as api:
        with pytest.raises(ValueError, match="y is a number or a list of numbers"):
            api.posterior("gmm", y)
        assert len(api.posterior("gmm", (0.1, 0.2), num_samples=5)) == 2  # a tuple is ordered: sent as a list


class Answers(httpx.BaseTransport):
    """Answers every request 200 with the same headers and body (a proxy's page, a broken server)."""

    def __init__(self, headers: dict[str, str], content: bytes) -> None:
        self.headers, self.content = headers, content

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=self.headers, content=self.content)


HTML = {"content-type": "text/html; charset=utf-8"}
JSON_TYPE = {"content-type": "application/json"}
ARROW_TYPE = {"content-type": client_module.ARROW}


def real_answer(client, accept: str, model: str = "gmm", **body) -> bytes:
    """The app's answer's bytes for ``body`` (30 samples) in ``accept``'s media type."""
    response = client.post(
        f"/v1/models/{model}/posterior", json={"num_samples": 30, **body}, headers={"accept": accept}
    )
    assert response.status_code == 200
    return response.content


def refused(format: str, headers: dict[str, str], content: bytes, call) -> InvalidAnswer:
    """What ``call(api)`` raises against a server answering 200 with ``content``; the client keeps its format."""
    with AmortizedClient(transport=Answers(headers, content), base_url="http://t", format=format) as api:
        with pytest.raises(InvalidAnswer) as raised:
            call(api)
        assert api.format == format  # a body that is not an answer says nothing of the server's formats
    assert raised.value.status == 200
    return raised.value


def both_calls(y, objective="pq"):
    """posterior() and posterior_arrays() of gmm at ``y``."""
    return (
        lambda api: api.posterior("gmm", y, objective, num_samples=30),
        lambda api: api.posterior_arrays("gmm", y, objective, num_samples=30),
    )


@pytest.mark.parametrize("format", ["arrow", "json"])
def test_a_success_that_is_not_the_services_answer_raises_invalid_answer(client, format):
    """A proxy's page, JSON that is not an answer, or is one of another shape: InvalidAnswer naming the media type
    and what was wrong, never json's own error, a KeyError or an OverflowError, and the client keeps its format."""
    deep = b"[" * 200_000 + b"]" * 200_000  # past Python's recursion limit
    cases = [
        (HTML, b"<html><body>Please log in to the hotel Wi-Fi</body></html>", "text/html", "Please log in"),
        ({}, b"", "no Content-Type", "expected"),
        (JSON_TYPE, b"{not json", "application/json", "not JSON"),
        (JSON_TYPE, b"[1, 2]", "application/json", "not a posterior answer"),
        (JSON_TYPE, b'{"results": []}', "application/json", "not a posterior answer"),
        (JSON_TYPE, b"\xff\xfe", "application/json", "not JSON"),
        (JSON_TYPE, deep, "application/json", "RecursionError"),
        # nearly an answer: a field missing or of another type
        (JSON_TYPE, b'{"model": "gmm", "objective": "pq"}', "application/json", "y is None, not a number"),
        (JSON_TYPE, b'{"model": "gmm", "objective": "pq", "y": 0.5, "samples": 5}', "application/json", "JSON"),
        (JSON_TYPE, b'{"model": "gmm", "objectives": {"pq": 1}}', "application/json", "JSON answer"),
        (JSON_TYPE, b'{"model": "gmm", "objective": "pq", "y": "a"}', "application/json", "ValueError"),
        (JSON_TYPE, b'{"objective": "pq", "y": 0.5}', "application/json", "model None"),
    ]
    for headers, content, named, reason in cases:
        for call in both_calls(0.5):
            error = refused(format, headers, content, call)
            assert named in str(error) and reason in str(error), (content[:80], str(error))


def altered_json(content: bytes, change) -> bytes:
    """A real JSON answer with ``change(answer)`` applied."""
    answer = json.loads(content)
    change(answer)
    return json.dumps(answer).encode()


def test_a_json_answer_that_is_not_this_requests_raises_invalid_answer(client):
    """Well-formed JSON answers of another model, objective or set of observations (a row repeated, rows swapped,
    others' y), with a part of another shape or a number no float holds: InvalidAnswer, not a wrong answer."""
    ys = [0.5, 1.0]
    one = real_answer(client, "application/json", y=ys)
    both = real_answer(client, "application/json", y=ys, objective="both")
    huge = int("1" + "0" * 400)

    def set_(path, value):
        def change(answer):
            *head, last = path
            for key in head:
                answer = answer[key]
            answer[last] = value

        return change

    cases = [
        (one, "pq", set_(["model"], "gaussian"), "model 'gaussian'"),
        (one, "pq", set_(["results", 1, "model"], "gmm_open"), "model 'gmm_open'"),
        (one, "pq", set_(["results", 1, "objective"], "qp"), "another objective"),
        (one, "pq", set_(["results", 1], json.loads(one)["results"][0]), "observations"),  # a row repeated
        (one, "pq", lambda a: a["results"].reverse(), "observations"),  # rows swapped
        (one, "pq", set_(["results", 1, "y"], 6.0), "observations"),
        (one, "pq", set_(["results", 0, "samples", "x", 0], huge), "OverflowError"),
        (one, "pq", set_(["results", 0, "log_weights", 0], huge), "OverflowError"),
        (one, "pq", set_(["results", 0, "log_weights"], "a"), "ValueError"),
        (one, "pq", set_(["results", 0, "y"], True), "y is True, not a number"),
        (one, "pq", set_(["results", 0, "y"], "0.5"), "y is '0.5', not a number"),
        (one, "pq", set_(["results", 1, "seed"], 1.5), "seed is 1.5, not a number"),
        (both, "both", lambda a: a["results"][1]["objectives"].pop("qp"), "objectives ['pq']"),
        (both, "both", set_(["results", 1], json.loads(one)["results"][1]), "objectives []"),
        (both, "both", set_(["results", 1, "objectives", "qp"], json.loads(one)["results"][1]), "another objective"),
    ]
    for content, objective, change, reason in cases:
        for call in both_calls(ys, objective):
            error = refused("json", JSON_TYPE, altered_json(content, change), call)
            assert reason in error.reason, (reason, error.reason)
    with AmortizedClient(transport=Answers(JSON_TYPE, both), base_url="http://t", format="json") as api:  # control
        assert api.posterior("gmm", ys, "both", num_samples=30)[1]["qp"].objective == "qp"


def test_an_arrow_answer_that_is_corrupt_cut_or_not_this_requests_raises_invalid_answer(client):
    """Garbage, a stream cut anywhere (its Content-Length the cut length: pyarrow raises ArrowInvalid or OSError by
    where it is cut), a stream with no rows, rows of another objective, model or observations, in another order,
    or a column of numbers holding text: InvalidAnswer."""
    import pyarrow as pa

    ys = [0.5, 1.0, 2.0]
    whole = real_answer(client, client_module.ARROW, y=ys)
    table = pa.ipc.open_stream(whole).read_all()

    def written(changed) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, changed.schema) as writer:
            writer.write_table(changed)
        return sink.getvalue().to_pybytes()

    empty = pa.BufferOutputStream()
    with pa.ipc.new_stream(empty, table.schema):
        pass  # the schema, no record batch
    bodies = [b"garbage, not an Arrow stream", b"", empty.getvalue().to_pybytes()]
    bodies += [whole[:cut] for cut in range(0, len(whole), max(1, len(whole) // 40))] + [whole[:-1]]
    bodies += [whole[:-8]]  # every message whole, the end-of-stream marker cut: read as a complete table before
    for content in bodies:
        for call in both_calls(ys):
            error = refused("arrow", ARROW_TYPE, content, call)
            assert client_module.ARROW in str(error) and "Arrow" in error.reason
    both = pa.ipc.open_stream(real_answer(client, client_module.ARROW, y=ys, objective="both")).read_all()
    index = table.column_names.index("log_weights")
    texts = pa.array([["a"] * 30] * 3)
    cases = [
        (real_answer(client, client_module.ARROW, y=ys, objective="qp"), ys, "pq", "objectives ['qp'"),
        (whole, ys + [4.0], "pq", "not 4 observations"),
        (whole, 0.5, "pq", "not 1 observations"),
        (whole, ys, "both", "not 3 observations x 2"),
        (written(table.take([0, 0, 2])), ys, "pq", "observations"),  # a row repeated
        (written(table.take([1, 0, 2])), ys, "pq", "observations"),  # rows swapped
        (whole, [0.5, 1.0, 2.5], "pq", "observations"),
        (written(both.take([0, 1, 3, 2, 4, 5])), ys, "both", "objectives ['pq', 'qp', 'qp', 'pq']"),
        (written(table.replace_schema_metadata({**table.schema.metadata, b"model": b"gmm_open"})), ys, "pq", "model"),
        (real_answer(client, client_module.ARROW, "gmm_open", y=ys), ys, "pq", "model 'gmm_open'"),
        (written(table.set_column(index, "log_weights", texts)), ys, "pq", "log_weights"),
        (written(table.set_column(table.column_names.index("y"), "y", pa.array(ys, pa.float32()))), ys, "pq", "y"),
        (written(table.set_column(table.column_names.index("seed"), "seed", pa.array([1.0] * 3))), ys, "pq", "seed"),
        (written(strings_for_x(table)), ys, "pq", "samples.x"),
    ]
    for content, y, objective, reason in cases:
        for call in both_calls(y, objective):
            assert reason in refused("arrow", ARROW_TYPE, content, call).reason, reason
    with AmortizedClient(transport=Answers(ARROW_TYPE, whole), base_url="http://t") as api:  # the control: it reads
        assert api.posterior_arrays("gmm", ys, num_samples=30).x.shape == (3, 30)


def strings_for_x(table):
    """``table`` with its samples' x as text (which a float conversion would read as the same numbers)."""
    import pyarrow as pa

    samples = table.column("samples").combine_chunks()
    x = samples.field("x")
    text = pa.FixedSizeListArray.from_arrays(pa.array([str(v) for v in x.flatten().to_pylist()]), x.type.list_size)
    fields = [text if f.name == "x" else samples.field(f.name) for f in samples.type]
    replaced = pa.StructArray.from_arrays(fields, names=[f.name for f in samples.type])
    return table.set_column(table.column_names.index("samples"), "samples", replaced)


def test_answers_a_proxy_may_reorder_or_relabel_still_read(client):
    """JSON objects are unordered: a "both" answer re-serialised with qp's key first reads as the same answer; a
    Content-Length of digits that are not ASCII is no length (the body is read as it comes), not a crash."""
    ys = [0.5, 1.0]
    both = real_answer(client, "application/json", y=ys, objective="both")
    answer = json.loads(both)
    for result in answer["results"]:
        result["objectives"] = dict(reversed(result["objectives"].items()))
    with AmortizedClient(transport=Answers(JSON_TYPE, json.dumps(answer).encode()), base_url="http://t") as api:
        reordered = api.posterior_arrays("gmm", ys, "both", num_samples=30)
    with AmortizedClient(transport=Answers(JSON_TYPE, both), base_url="http://t") as api:
        original = api.posterior_arrays("gmm", ys, "both", num_samples=30)
    for name in ("pq", "qp"):
        same(reordered[name].x, original[name].x)
    whole = real_answer(client, client_module.ARROW, y=ys)
    superscript = [(b"content-type", client_module.ARROW.encode()), (b"content-length", "\u00b2".encode("latin-1"))]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers=superscript, content=whole))
    with AmortizedClient(transport=transport, base_url="http://t") as api:
        assert api.posterior_arrays("gmm", ys, num_samples=30).x.shape == (2, 30)


def test_model_descriptions_that_are_not_raise_invalid_answer(client):
    """models() and model(): a page, no body, text, binary, JSON of another shape, names that are not text or
    another model's description: InvalidAnswer, not json's error or the body passed on as a description."""
    cases = [
        (HTML, b"<html>proxy</html>"),
        ({}, b""),
        ({"content-type": "text/plain"}, b"hello"),
        ({"content-type": "application/octet-stream"}, bytes(range(256))),
        (JSON_TYPE, b"\xff\xfe\x00"),
        (JSON_TYPE, b"[" * 200_000 + b"]" * 200_000),
        (JSON_TYPE, b"[1, 2, 3]"),
        (JSON_TYPE, b"null"),
        (JSON_TYPE, b'{"results": [{"foo": 1}]}'),
        (JSON_TYPE, b'[{"foo": 1}]'),
        (JSON_TYPE, b'[{"name": 1}]'),
        (JSON_TYPE, b'{"name": "gaussian"}'),
    ]
    for headers, content in cases:
        refused("json", headers, content, lambda api: api.models())
        refused("json", headers, content, lambda api: api.model("gmm"))
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as api:  # the control
        assert "gmm" in [m["name"] for m in api.models()] and api.model("gmm")["name"] == "gmm"


DRAWN = {"num_samples": 30, "resample": True, "include": ["samples", "log_weights", "resampled", "q"]}


def drawn_calls(y, **options):
    """posterior() and posterior_arrays() of gmm_open at ``y`` with :data:`DRAWN`'s options (``options`` override)."""
    body = DRAWN | options
    return (lambda api: api.posterior("gmm_open", y, **body), lambda api: api.posterior_arrays("gmm_open", y, **body))


def cut(path, keep):
    """A change of a JSON answer: in every result, the list at ``path`` cut to its first ``keep`` items."""

    def change(answer):
        for result in answer.get("results", [answer]):
            for key in path[:-1]:
                result = result[key]
            result[path[-1]] = result[path[-1]][:keep]

    return change


@pytest.mark.parametrize("y", [0.5, [0.5, 1.0]], ids=["one row", "two rows"])
def test_draws_of_another_count_raise_invalid_answer(client, y):
    """A single answer whose samples held 3 draws and log weights 10 (num_samples=10) read as x of shape (3,); with
    two rows NumPy refused the ragged lists, with one it did not. Every draw column must hold num_samples per row,
    in JSON (one row or several) and in Arrow."""
    one = real_answer(client, "application/json", "gmm_open", y=y, **DRAWN)
    cases = [
        (["samples", "x"], 3, "x is"),
        (["log_weights"], 29, "log_weights is"),
        (["samples", "k"], 0, "k is"),  # a latent's column
        (["resampled", "x"], 5, "resampled x is"),
    ]
    for path, keep, reason in cases:
        for call in drawn_calls(y):
            error = refused("json", JSON_TYPE, altered_json(one, cut(path, keep)), call)
            assert reason in error.reason or "JSON answer" in error.reason, (path, error.reason)
    for call in drawn_calls(y, num_samples=31):  # the request asked for another count than the answer holds
        assert "not 31 draws" in refused("json", JSON_TYPE, one, call).reason
    with AmortizedClient(transport=Answers(JSON_TYPE, one), base_url="http://t", format="json") as api:  # control
        read = api.posterior_arrays("gmm_open", y, **DRAWN)
        assert read.x.shape == read.log_weights.shape == read.resampled["x"].shape == (len(np.atleast_1d(y)), 30)
    whole = real_answer(client, client_module.ARROW, "gmm_open", y=y, **DRAWN)
    for call in drawn_calls(y, num_samples=20):
        assert "not 20 draws" in refused("arrow", ARROW_TYPE, whole, call).reason


def test_bytes_after_an_arrow_streams_end_raise_invalid_answer(client):
    """The IPC reader stops at the end-of-stream marker: a valid stream followed by anything read as a success."""
    whole = real_answer(client, client_module.ARROW, y=[0.5, 1.0])
    for tail in (b"garbage", b"\x00", b"\xff\xff\xff\xff\x00\x00\x00\x00", whole):
        for call in both_calls([0.5, 1.0]):
            error = refused("arrow", ARROW_TYPE, whole + tail, call)
            assert f"{len(tail)} bytes follow the end of its Arrow stream" in error.reason
    with AmortizedClient(transport=Answers(ARROW_TYPE, whole), base_url="http://t") as api:  # the control
        assert api.posterior_arrays("gmm", [0.5, 1.0], num_samples=30).x.shape == (2, 30)


@pytest.mark.parametrize("name", [5, 1.5, None, b"gmm", ["gmm"], ("gmm",)])
def test_a_model_name_that_is_not_text_raises_type_error_naming_it(name):
    """posterior(5, 0.0) raised "argument of type 'int' is not iterable" from the URL escaping."""
    with AmortizedClient(transport=Answers(JSON_TYPE, b"{}"), base_url="http://t") as api:
        for call in (
            lambda: api.posterior(name, 0.5),
            lambda: api.posterior_arrays(name, 0.5),
            lambda: api.model(name),
        ):
            with pytest.raises(TypeError, match="a model's name is a str") as raised:
                call()
            assert repr(name) in str(raised.value)


def drop(part, rows=None):
    """A change of a JSON answer: ``part`` removed from every result (``rows``: from those results only)."""

    def change(answer):
        results = answer.get("results", [answer])
        for i, result in enumerate(results):
            if rows is None or i in rows:
                result.pop(part, None)

    return change


@pytest.mark.parametrize(
    "include, resample",
    [(None, False), (None, True), (["samples", "log_weights", "q"], False), (["summary", "exact", "samples"], False)],
)
def test_parts_the_request_asked_for_and_the_answer_lacks_raise_invalid_answer(client, include, resample):
    """An answer without the samples it was asked for read as zero draws (x None), in JSON and Arrow; a batch
    whose first result lacked samples while the second held 33 read as x of shape (0,) and (33,). Each part asked
    for must be in every result, and no other."""
    import pyarrow as pa

    ys = [0.5, 1.0]
    options = {"num_samples": 30, "resample": resample, "include": include}
    body = {k: v for k, v in options.items() if v is not None}
    asked = client_module.answer_parts({"y": ys, **body})
    calls = (
        lambda api: api.posterior("gmm_open", ys, **options),
        lambda api: api.posterior_arrays("gmm_open", ys, **options),
    )
    one = real_answer(client, "application/json", "gmm_open", y=ys, **body)
    whole = real_answer(client, client_module.ARROW, "gmm_open", y=ys, **body)
    table = pa.ipc.open_stream(whole).read_all()
    for part in sorted(asked):
        key = part.split(".")[0]
        for change in (drop(key), drop(key, rows={0}), drop(key, rows={1})):
            for call in calls:
                error = refused("json", JSON_TYPE, altered_json(one, change), call)
                assert key in error.reason and ("missing" in error.reason or "different parts" in error.reason)
        sink = pa.BufferOutputStream()
        without = table.drop_columns([key])
        with pa.ipc.new_stream(sink, without.schema) as writer:
            writer.write_table(without)
        for call in calls:
            assert f"missing {key}" in refused("arrow", ARROW_TYPE, sink.getvalue().to_pybytes(), call).reason
    extra = real_answer(client, "application/json", "gmm_open", y=ys, num_samples=30, include=["q", "exact", "summary"])
    if asked != {"q", "exact", "summary.q"}:  # another request's parts
        for call in calls:
            assert "not the request's" in refused("json", JSON_TYPE, extra, call).reason
    for format, kind, content in (("json", JSON_TYPE, one), ("arrow", ARROW_TYPE, whole)):  # the controls read
        with AmortizedClient(transport=Answers(kind, content), base_url="http://t", format=format) as api:
            read = api.posterior_arrays("gmm_open", ys, **options)
            assert client_module.held_parts(read) == asked and (read.x is None) == ("samples" not in asked)


def test_a_batch_whose_results_hold_draws_of_different_kinds_raises_invalid_answer(client):
    ys = [0.5, 1.0]
    one = real_answer(client, "application/json", "gmm_open", y=ys, **DRAWN)

    def rename_latent(answer):
        samples = answer["results"][1]["samples"]
        samples["other"] = samples.pop(next(k for k in samples if k != "x"))

    for call in drawn_calls(ys):
        assert "different draws" in refused("json", JSON_TYPE, altered_json(one, rename_latent), call).reason


def test_the_clients_rule_for_an_answers_parts_is_the_servers():
    """The light client cannot import the service: it writes the rule again (answer_parts), held equal here."""
    import itertools

    from service.schemas import Part, resolve_parts

    names = list(typing.get_args(Part))
    includes = [None] + [list(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]
    for include, resample, num_samples in itertools.product(includes, (False, True), (0, 30)):
        body = {"y": 0.5, "num_samples": num_samples, "resample": resample, "include": include}
        assert client_module.answer_parts(body) == resolve_parts(include, num_samples, resample), body


def test_an_answer_to_another_seed_version_or_with_infinite_draws_raises_invalid_answer(client):
    """Accepted before: an answer of another seed than the request's, of another network than the pinned one, with
    an infinite draw or weight (the service writes none; JSON's 1e400 reads as one), or a "both" answer whose inner
    result names another model or y than its row."""
    import pyarrow as pa

    described = client.get("/v1/models/gmm").json()
    version, sha256 = described["versions"]["pq"], described["artifacts"]["pq"]["weights"]["sha256"]
    one = {"y": 0.5, "seed": 7, "num_samples": 30}
    batch = {"y": [0.5, 1.0], "seed": 7, "num_samples": 30}
    both = {"y": [0.5, 1.0], "seed": 7, "num_samples": 30, "objective": "both"}

    def calls(body, **more):
        options = {k: v for k, v in body.items() if k != "y"} | more
        return (
            lambda api: api.posterior("gmm", body["y"], **options),
            lambda api: api.posterior_arrays("gmm", body["y"], **options),
        )

    def json_of(body, change):
        return altered_json(real_answer(client, "application/json", **body), change)

    def first(answer):
        return answer.get("results", [answer])[0]

    cases = [
        (json_of(one, lambda a: a.update(seed=8)), one, {}, "seed 8"),
        (json_of(batch, lambda a: a.update(seed=8)), batch, {}, "seed 8"),
        (json_of(one, lambda a: a["versions"].update(pq="0" * 16)), one, {"version": version}, "pinned"),
        (json_of(one, lambda a: a["versions"].pop("pq")), one, {"version": version}, "pinned"),
        (json_of(one, lambda a: a["samples"]["x"].__setitem__(3, math.inf)), one, {}, "infinite"),
        (json_of(batch, lambda a: a["results"][1]["log_weights"].__setitem__(0, -math.inf)), batch, {}, "infinite"),
        (json_of(both, lambda a: first(a)["objectives"]["qp"].update(model="gaussian")), both, {}, "model 'gaussian'"),
        (json_of(both, lambda a: first(a).update(y=0.25)), both, {}, "is not its"),
        (json_of(one, lambda a: a["samples"]["x"].__setitem__(3, None)), one, {}, "not a finite number"),
        (json_of(one, lambda a: a["q"]["branches"][0].update(probability=7.0)), one, {}, "not a distribution"),
        (json_of(one, lambda a: a["q"]["branches"][0].update(std=-1.0)), one, {}, "stds not positive"),
        (json_of(batch, lambda a: a["results"][1]["q"]["branches"][0].update(mean=math.inf)), batch, {}, "not finite"),
    ]
    for content, body, more, reason in cases:
        for call in calls(body, **more):
            error = refused("json", JSON_TYPE, content, call)
            assert reason in error.reason, (reason, error.reason)
    for body in (one, batch):
        table = pa.ipc.open_stream(real_answer(client, client_module.ARROW, **body)).read_all()
        for written in ("8", "07", "\u0667", " 7"):  # another seed; 7 with a leading zero, in Arabic-Indic, spaced
            sink = pa.BufferOutputStream()
            other = table.replace_schema_metadata({**table.schema.metadata, b"seed": written.encode()})
            with pa.ipc.new_stream(sink, other.schema) as writer:
                writer.write_table(other)
            for call in calls(body):
                assert "seed" in refused("arrow", ARROW_TYPE, sink.getvalue().to_pybytes(), call).reason, written
    for body, more in ((one, {"version": version}), (batch, {"version": sha256}), (both, {})):  # controls
        options = {k: v for k, v in body.items() if k != "y"}
        content = real_answer(client, "application/json", **options, y=body["y"], **more)
        with AmortizedClient(transport=Answers(JSON_TYPE, content), base_url="http://t", format="json") as api:
            api.posterior("gmm", body["y"], **options, **more)


def test_include_may_be_a_set_and_a_refusal_carries_its_retry_after(client):
    """include={"q", ...} raised json's own TypeError; a 503 busy's Retry-After was not on the ApiError."""
    with AmortizedClient(transport=client._transport, base_url="http://testserver", format="json") as api:
        as_set = api.posterior("gmm_open", 0.5, num_samples=20, seed=4, include={"q", "diagnostics"})
        as_list = api.posterior("gmm_open", 0.5, num_samples=20, seed=4, include=["diagnostics", "q"])
    assert as_set.raw == as_list.raw and "samples" not in as_set.raw

    class Busy(httpx.BaseTransport):
        def __init__(self, retry_after: str | None) -> None:
            self.retry_after = retry_after

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            headers = {} if self.retry_after is None else {"retry-after": self.retry_after}
            detail = [{"loc": ["body"], "msg": "busy", "type": "busy"}]
            return httpx.Response(503, headers=headers, json={"detail": detail})

    for header, seconds in (("30", 30.0), (" 7 ", 7.0), (None, None), ("Wed, 21 Oct 2026 07:28:00 GMT", None)):
        with AmortizedClient(transport=Busy(header), base_url="http://t") as api, pytest.raises(ApiError) as raised:
            api.posterior("gmm", 0.0)
        assert raised.value.status == 503 and raised.value.retry_after == seconds
        assert raised.value.detail[0]["type"] == "busy"
