"""GET /metrics after mixed traffic (issue 10, item 4): the exposition parsed by a strict parser
of the Prometheus text format 0.0.4 (HELP and TYPE once per family and before its samples,
samples of a family together, label escaping, cumulative buckets ending in +Inf = _count, _sum
present, counters named _total), values that match the traffic sent, the OpenTelemetry GenAI
histograms with their labels and bucket boundaries, and the bound on model labels (64, then
"other")."""

import json
import math
import re

import pytest

from mock_upstream import ChatStream, Json, Status
from routetest import wait_until

CHAT = "/v1/chat/completions"
SK_A, SK_B = "sk-metrics-a-secret-1111", "sk-metrics-b-secret-2222"

# Candidates in id order, so which upstream fails over to which is fixed.
ORDERED_HOOKS = r'''
return {
  pick_upstream = function(req, ups)
    table.sort(ups, function(a, b) return a.id < b.id end)
    return ups
  end,
}
'''

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_labels(text, line):
    """'a="x",b="y\\"z"' -> (("a", "x"), ("b", 'y"z')); only \\\\, \\" and \\n escapes."""
    labels, i = [], 0
    while i < len(text):
        m = LABEL_NAME_RE.match(text, i)
        assert m, "bad label name in %r" % line
        name = m.group(0)
        i = m.end()
        assert text[i:i + 2] == '="', "bad label in %r" % line
        i += 2
        value = []
        while True:
            assert i < len(text), "unterminated label value in %r" % line
            c = text[i]
            if c == "\\":
                esc = text[i + 1:i + 2]
                assert esc in ("\\", '"', "n"), "bad escape \\%s in %r" % (esc, line)
                value.append({"\\": "\\", '"': '"', "n": "\n"}[esc])
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                assert c != "\n"
                value.append(c)
                i += 1
        assert name not in [k for k, _ in labels], "label %s twice in %r" % (name, line)
        labels.append((name, "".join(value)))
        if i < len(text):
            assert text[i] == ",", "bad label separator in %r" % line
            i += 1
            assert i < len(text), "trailing comma in %r" % line
    return tuple(sorted(labels))


def split_sample(line):
    if "{" in line:
        name, rest = line.split("{", 1)
        close = len(rest)
        # The closing brace is the last one outside a quoted value.
        inq, i = False, 0
        while i < len(rest):
            c = rest[i]
            if inq and c == "\\":
                i += 2
                continue
            if c == '"':
                inq = not inq
            elif c == "}" and not inq:
                close = i
                break
            i += 1
        assert close < len(rest), "unterminated labels in %r" % line
        labels_text, value = rest[:close], rest[close + 1:]
        assert value.startswith(" "), line
        return name, parse_labels(labels_text, line), value[1:]
    name, value = line.split(" ", 1)
    return name, (), value


def parse_value(text, line):
    assert " " not in text, "timestamps are not expected: %r" % line
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    v = float(text)
    return v


def family_of(sample_name, families):
    if sample_name in families:
        return sample_name
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample_name[:-len(suffix)]
        if sample_name.endswith(suffix) and families.get(base, {}).get("type") == "histogram":
            return base
    return None


def parse_exposition(text):
    """Returns {family: {"type", "help", "samples": {(name, labels): value}}}; asserts the
    format's rules on the way."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families, current, closed = {}, None, set()
    for line in text.split("\n")[:-1]:
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert NAME_RE.match(name), line
                fam = families.setdefault(name, {"samples": {}})
                if current != name:
                    assert name not in closed, "family %s reopened: %r" % (name, line)
                    if current:
                        closed.add(current)
                    current = name
                key = parts[1].lower()
                assert key not in fam, "%s given twice for %s" % (parts[1], name)
                assert not fam["samples"], "%s of %s after its samples" % (parts[1], name)
                if key == "type":
                    assert len(parts) == 4 and parts[3] in TYPES, line
                    fam["type"] = parts[3]
                else:
                    fam["help"] = parts[3] if len(parts) == 4 else ""
            continue
        name, labels, value = split_sample(line)
        assert NAME_RE.match(name), line
        fam_name = family_of(name, families)
        assert fam_name, "sample %r before its family's TYPE" % line
        assert fam_name == current, "sample %r away from its family" % line
        fam = families[fam_name]
        assert "type" in fam and "help" in fam, "HELP and TYPE come before %r" % line
        key = (name, labels)
        assert key not in fam["samples"], "duplicate series %r" % line
        fam["samples"][key] = parse_value(value, line)
    for name, fam in families.items():
        assert "type" in fam, "family %s has no TYPE" % name
        if fam["type"] == "counter":
            assert name.endswith("_total"), "counter %s not named _total" % name
        if fam["type"] == "histogram":
            check_histogram(name, fam["samples"])
    return families


def check_histogram(name, samples):
    series = {}
    for (sname, labels), v in samples.items():
        rest = tuple(kv for kv in labels if kv[0] != "le")
        s = series.setdefault(rest, {"buckets": []})
        if sname == name + "_bucket":
            le = dict(labels)["le"]
            s["buckets"].append((float(le.replace("+Inf", "inf")), v))
        elif sname == name + "_sum":
            s["sum"] = v
        elif sname == name + "_count":
            s["count"] = v
        else:
            raise AssertionError("%s in histogram %s" % (sname, name))
    for rest, s in series.items():
        assert "sum" in s and "count" in s, "%s%r lacks _sum or _count" % (name, rest)
        b = sorted(s["buckets"])
        assert b and b[-1][0] == math.inf, "%s%r has no +Inf bucket" % (name, rest)
        counts = [v for _, v in b]
        assert counts == sorted(counts), "%s%r buckets not cumulative" % (name, rest)
        assert b[-1][1] == s["count"], "%s%r +Inf != _count" % (name, rest)
        assert s["sum"] >= 0


def test_parser_rejects_what_it_should():
    good = ('# HELP a_total x\n# TYPE a_total counter\na_total{l="q\\"\\\\\\n"} 1\n'
            '# HELP h y\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\n'
            'h_sum 3\nh_count 2\n')
    fams = parse_exposition(good)
    assert fams["a_total"]["samples"][("a_total", (("l", 'q"\\\n'),))] == 1
    bad = [
        good.replace("# TYPE a_total counter\n", ""),                      # no TYPE
        good + "# TYPE a_total counter\n",                                  # TYPE twice
        good.replace('h_bucket{le="+Inf"} 2', 'h_bucket{le="+Inf"} 3'),      # +Inf != count
        good.replace('h_bucket{le="1"} 1', 'h_bucket{le="1"} 5'),            # not cumulative
        good.replace("h_sum 3\n", ""),                                      # no _sum
        good.replace('l="q\\"', 'l="q\\t'),                                 # bad escape
        good + 'a_total{l="z"} 1\n',                                        # family split
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse_exposition(text)


# --------------------------------------------------------------------------- helpers

def get_metrics(p, auth=True):
    r = p.request("GET", "/metrics", auth=auth)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
    return r.body.decode("utf-8"), parse_exposition(r.body.decode("utf-8"))


def samples(fams, family, name=None, **match):
    """{labels dict as sorted tuple: value} of family's samples named name (default: family)
    whose labels include match."""
    name = name or family
    out = {}
    for (sname, labels), v in fams[family]["samples"].items():
        d = dict(labels)
        if sname == name and all(d.get(k) == v2 for k, v2 in match.items()):
            out[labels] = v
    return out


def one(fams, family, name=None, **match):
    s = samples(fams, family, name, **match)
    assert len(s) == 1, (family, name, match, s)
    return next(iter(s.values()))


def chat(p, model, stream=False, token=None, include_usage=False):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    headers = {"Content-Type": "application/json"}
    return p.request("POST", CHAT, json.dumps(body).encode(), headers,
                     auth=token is None) if token is None else \
        p.request("POST", CHAT, json.dumps(body).encode(),
                  dict(headers, Authorization="Bearer " + token), auth=False)


@pytest.fixture
def ordered(tmp_path):
    d = tmp_path / "ordered_scripts"
    d.mkdir()
    (d / "route.lua").write_text(ORDERED_HOOKS)
    return d


# --------------------------------------------------------------------------- traffic

def test_metrics_after_mixed_traffic(proxy_factory, mock_factory, ordered):
    a, b = mock_factory("a"), mock_factory("b")
    p = proxy_factory(upstreams=[(SK_A, a.endpoint()), (SK_B, b.endpoint())],
                      scripts_dir=ordered)
    ids = {u["endpoint"]: str(u["id"]) for u in p.upstream_rows()}
    ua, ub = ids[a.endpoint()], ids[b.endpoint()]

    # Two successes on a; a 502 from a that fails over to b; both failing (the client gets a
    # 502); a refused client; an SSE stream with usage on a.
    assert chat(p, "gpt-m1").status == 200
    assert chat(p, "gpt-m1").status == 200
    a.enqueue(Status(502))
    assert chat(p, "gpt-m2").status == 200
    a.enqueue(Status(500))
    b.enqueue(Status(503))
    assert chat(p, "gpt-m3").status == 502
    assert chat(p, "gpt-evil", token="not-the-token").status == 403
    a.enqueue(ChatStream(usage=(5, 4, 9)))
    r = chat(p, "gpt-m1", stream=True, include_usage=True)
    assert r.status == 200 and b"[DONE]" in r.body
    # An embeddings call: input tokens only.
    a.set("/v1/embeddings", Json({"object": "list", "data": [], "model": "emb-1",
                                  "usage": {"prompt_tokens": 11, "total_tokens": 11}}))
    r = p.request("POST", "/v1/embeddings", b'{"model":"emb-1","input":"x"}',
                  {"Content-Type": "application/json"})
    assert r.status == 200

    def settled():
        _, f = get_metrics(p)
        total = sum(samples(f, "openai_route_requests_total").values())
        return f if total == 7 else None

    f = wait_until(settled, message="7 requests counted")
    text, _ = get_metrics(p)
    assert SK_A not in text and SK_B not in text and p.token not in text

    req = lambda **kw: one(f, "openai_route_requests_total", **kw)  # noqa: E731
    assert req(status="200", upstream=ua, model="gpt-m1") == 3
    assert req(status="200", upstream=ub, model="gpt-m2") == 1
    assert req(status="502", upstream="none", model="gpt-m3") == 1
    assert req(status="200", upstream=ua, model="emb-1") == 1
    # A refused client reached no upstream: its model is not a label.
    assert req(status="403", upstream="none", model="none") == 1
    assert "gpt-evil" not in text

    att = lambda **kw: one(f, "openai_route_upstream_attempts_total", **kw)  # noqa: E731
    assert att(upstream=ua, outcome="success") == 4
    assert att(upstream=ua, outcome="status") == 2
    assert att(upstream=ub, outcome="success") == 1
    assert att(upstream=ub, outcome="status") == 1
    assert sum(samples(f, "openai_route_upstream_attempts_total").values()) == 8

    tok = lambda **kw: one(f, "openai_route_tokens_total", **kw)  # noqa: E731
    assert tok(upstream=ua, model="gpt-m1", kind="prompt") == 15
    assert tok(upstream=ua, model="gpt-m1", kind="completion") == 18
    assert tok(upstream=ub, model="gpt-m2", kind="prompt") == 5
    assert tok(upstream=ub, model="gpt-m2", kind="completion") == 7
    # Embeddings usage comes from the extractor of issue 10 item 2: checked once it is there.
    emb_tokens = samples(f, "openai_route_tokens_total", upstream=ua, model="emb-1",
                         kind="prompt")
    assert list(emb_tokens.values()) in ([], [11])

    h = "openai_route_request_duration_seconds"
    assert f[h]["type"] == "histogram"
    assert one(f, h, h + "_count") == 7
    assert one(f, "openai_route_first_byte_seconds", "openai_route_first_byte_seconds_count") == 5
    conn = "openai_route_upstream_connect_seconds"
    counts = samples(f, conn, conn + "_count")
    assert {dict(k)["upstream"] for k in counts} == {ua, ub}
    assert all(1 <= v <= 6 for v in counts.values()), counts  # new connections only

    g = lambda name: one(f, name)  # noqa: E731
    assert g("openai_route_active_connections") >= 1
    assert g("openai_route_active_requests") >= 1  # this very scrape
    assert g("openai_route_active_streams") == 0
    assert g("openai_route_records_queue_depth") >= 0
    assert g("openai_route_records_dropped_total") == 0
    for fam, kind in (("openai_route_active_streams", "gauge"),
                      ("openai_route_records_queue_depth", "gauge"),
                      ("openai_route_records_dropped_total", "counter"),
                      ("openai_route_script_reloads_total", "counter")):
        assert f[fam]["type"] == kind, fam

    # The GenAI conventions, in their Prometheus form.
    gt = "gen_ai_client_token_usage"
    assert f[gt]["type"] == "histogram"
    base = dict(gen_ai_operation_name="chat", gen_ai_provider_name="openai",
                gen_ai_request_model="gpt-m1")
    assert one(f, gt, gt + "_count", gen_ai_token_type="input", **base) == 3
    assert one(f, gt, gt + "_sum", gen_ai_token_type="input", **base) == 15
    assert one(f, gt, gt + "_sum", gen_ai_token_type="output", **base) == 18
    emb = dict(gen_ai_operation_name="embeddings", gen_ai_provider_name="openai",
               gen_ai_request_model="emb-1")
    if emb_tokens:
        assert one(f, gt, gt + "_sum", gen_ai_token_type="input", **emb) == 11
    assert not samples(f, gt, gt + "_count", gen_ai_token_type="output", **emb)
    d = "gen_ai_server_request_duration_seconds"
    assert one(f, d, d + "_count", **emb) == 1
    les = sorted(float(dict(k)["le"].replace("+Inf", "inf"))
                 for k in samples(f, gt, gt + "_bucket", gen_ai_token_type="input", **base))
    assert les == [4.0 ** i for i in range(14)] + [math.inf]

    d = "gen_ai_server_request_duration_seconds"
    assert one(f, d, d + "_count", **base) == 3
    assert one(f, d, d + "_count", gen_ai_request_model="gpt-m3", error_type="502") == 1
    les = sorted(float(dict(k)["le"].replace("+Inf", "inf"))
                 for k in samples(f, d, d + "_bucket", **base))
    assert les == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                   40.96, 81.92, math.inf]
    t = "gen_ai_server_time_to_first_token_seconds"
    assert one(f, t, t + "_count", **base) == 1  # the stream
    les = sorted(float(dict(k)["le"].replace("+Inf", "inf"))
                 for k in samples(f, t, t + "_bucket", **base))
    assert les == [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                   5.0, 7.5, 10.0, math.inf]
    o = "gen_ai_server_time_per_output_token_seconds"
    assert one(f, o, o + "_count", **base) == 1
    les = sorted(float(dict(k)["le"].replace("+Inf", "inf"))
                 for k in samples(f, o, o + "_bucket", **base))
    assert les == [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                   math.inf]


def test_invalid_endpoint_is_a_counted_attempt(proxy_factory, mock):
    # An endpoint that does not parse is never contacted, but it was tried: it shows in the
    # attempts as its own outcome, and the request fails over to the next upstream.
    p = proxy_factory(upstreams=[(SK_A, "ftp://nowhere/v1"), (SK_B, mock.endpoint())])
    ids = {u["endpoint"]: str(u["id"]) for u in p.upstream_rows()}
    assert chat(p, "gpt-m1").status == 200

    def settled():
        _, f = get_metrics(p)
        return f if sum(samples(f, "openai_route_requests_total").values()) == 1 else None

    f = wait_until(settled, message="1 request counted")
    att = lambda **kw: one(f, "openai_route_upstream_attempts_total", **kw)  # noqa: E731
    assert att(upstream=ids["ftp://nowhere/v1"], outcome="invalid_endpoint") == 1
    assert att(upstream=ids[mock.endpoint()], outcome="success") == 1


def test_script_reloads_counted(proxy_factory, mock, tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "route.lua").write_text("return {}\n")
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], scripts_dir=d)
    assert p.request("POST", "/admin/reload").status == 200
    (d / "route.lua").write_text("return {\n")  # a syntax error
    r = p.request("POST", "/admin/reload")
    assert r.status == 400

    def counted():
        _, f = get_metrics(p)
        s = {dict(k)["result"]: v for k, v in samples(f, "openai_route_script_reloads_total")
             .items()}
        return s if s.get("failure", 0) >= 1 else None

    s = wait_until(counted, message="a failed reload counted")
    # The file watch may reload too: at least the admin calls are counted.
    assert s["success"] >= 1 and s["failure"] >= 1


def test_model_labels_are_bounded_and_escaped(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())])
    weird = 'we"ird\\name\nx'
    models = [weird] + ["model-%02d" % i for i in range(69)]  # 70 distinct names
    for m in models:
        assert chat(p, m).status == 200

    def settled():
        _, f = get_metrics(p)
        return f if sum(samples(f, "openai_route_requests_total").values()) == 70 else None

    f = wait_until(settled, message="70 requests counted")
    by_model = {}
    for labels, v in samples(f, "openai_route_requests_total").items():
        by_model[dict(labels)["model"]] = v
    # 64 names, then "other" for the rest.
    assert len(by_model) == 65, sorted(by_model)
    assert by_model["other"] == 6
    assert by_model.get(weird) == 1, [m for m in by_model if "ird" in m]  # escaped in the text, read back as sent
    assert set(by_model) - {"other"} == set(models[:64])
    gt = "gen_ai_client_token_usage"
    gmodels = {dict(k)["gen_ai_request_model"] for k in samples(f, gt, gt + "_count")}
    assert len(gmodels) == 65 and "other" in gmodels
