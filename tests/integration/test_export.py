"""-export (issue 10, item 7): the recorded chat exchanges as JSON Lines in the OpenAI chat
fine-tuning format ({"messages": [...request messages..., {"role": "assistant", "content":
<recorded text>}]}), oldest first, filtered by -since and -model; the rows that are not chat
exchanges or failed are skipped and counted on stderr ("exported N, skipped M (...)")."""

import json
import re
import sqlite3
import subprocess

from mock_upstream import ChatCompletion, ChatStream, Json, Status

SUMMARY_RE = re.compile(r"^exported (\d+), skipped (\d+)(?: \((.*)\))?$", re.M)


def run(binary, db, *args, cwd=None):
    return subprocess.run([binary, "-database", str(db)] + list(args), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=cwd)


def summary(stderr):
    m = SUMMARY_RE.search(stderr)
    assert m, "no summary line in %r" % stderr
    reasons = {}
    if m.group(3):
        for part in m.group(3).split(", "):
            n, _, name = part.partition(" ")
            reasons[name] = int(n)
    return int(m.group(1)), int(m.group(2)), reasons


def lines_of(text):
    """Each line parsed on its own: the JSON Lines contract."""
    out = []
    for line in text.splitlines():
        assert line.strip(), "empty line in the export"
        out.append(json.loads(line))
    return out


def test_round_trip_through_the_proxy(proxy_factory, mock, tmp_path, binary):
    p = proxy_factory(upstreams=[("sk-up", mock.endpoint())])
    convo = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Capital of France? \u00e9\u00e8 \u2603"}]
    mock.enqueue(ChatCompletion("Paris. \u2603"))
    assert p.request("POST", "/v1/chat/completions",
                     {"model": "gpt-a", "messages": convo}).status == 200
    mock.enqueue(ChatStream(["Ber", "lin", "."]))
    assert p.request("POST", "/v1/chat/completions",
                     {"model": "gpt-b", "stream": True,
                      "messages": [{"role": "user", "content": "Capital of Germany?"}]}
                     ).status == 200
    # Not chat: embeddings.
    mock.enqueue(Json({"object": "list", "data": [], "model": "emb",
                       "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
    assert p.request("POST", "/v1/embeddings", {"model": "emb", "input": "x"}).status == 200
    # Failed: the upstream's 400 passes through; a 500 fails over to nothing (502, error set).
    mock.enqueue(Status(400, {"error": {"message": "bad", "type": "invalid_request_error"}}))
    assert p.chat("x", model="gpt-a").status == 400
    mock.enqueue(Status(500))
    assert p.chat("y", model="gpt-a").status == 502
    # No text: a tool call.
    mock.enqueue(Json({"id": "c", "object": "chat.completion", "model": "gpt-a",
                       "choices": [{"index": 0, "finish_reason": "tool_calls",
                                    "message": {"role": "assistant", "content": None,
                                                "tool_calls": []}}]}))
    assert p.chat("call a tool", model="gpt-a").status == 200
    p.wait_for_records(6)

    out = tmp_path / "out.jsonl"
    r = run(binary, p.db_path, "-export", str(out))
    assert r.returncode == 0, r.stderr
    got = lines_of(out.read_text(encoding="utf-8"))
    assert got == [
        {"messages": convo + [{"role": "assistant", "content": "Paris. \u2603"}]},
        {"messages": [{"role": "user", "content": "Capital of Germany?"},
                      {"role": "assistant", "content": "Berlin."}]},
    ]
    assert summary(r.stderr) == (2, 4, {"not a chat exchange": 1, "failed": 2,
                                        "no response text": 1}), r.stderr

    # "-" is stdout, the same lines.
    r2 = run(binary, p.db_path, "-export", "-")
    assert r2.returncode == 0, r2.stderr
    assert lines_of(r2.stdout) == got


def make_db(binary, tmp_path):
    """A database with the full schema, made by the binary, filled by hand below."""
    db = tmp_path / "db.sqlite"
    r = run(binary, db, "-set", "authorization=tok")
    assert r.returncode == 0, r.stderr
    return db


def insert(db, rows):
    c = sqlite3.connect(str(db))
    for i, r in enumerate(rows):
        c.execute("INSERT INTO records (id, created_at, ip, body, response, elapsed_time, model,"
                  " status, upstream_id, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  ("row-%04d" % i, r["at"], "127.0.0.1", r.get("body"), r.get("response", ""),
                   0, r.get("model", ""), r.get("status", 200), 1, r.get("error", "")))
    c.commit()
    c.close()


def chat_body(model, text):
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]})


def test_filters_since_and_model(binary, tmp_path):
    db = make_db(binary, tmp_path)
    rows = []
    # Two days, two models, times written under different UTC offsets (as after a DST change
    # or a move): the filter compares instants, not text.
    for day, offset in (("2024-05-01", "+08:00"), ("2024-05-02", "-05:00")):
        for hour in ("01", "13"):
            for model in ("gpt-a", "gpt-b"):
                rows.append({"at": "%s %s:00:00.123456789%s" % (day, hour, offset),
                             "model": model, "body": chat_body(model, "%s %s" % (day, hour)),
                             "response": "answer %s %s %s" % (model, day, hour)})
    insert(db, rows)

    def export(*args):
        r = run(binary, db, "-export", "-", *args)
        assert r.returncode == 0, r.stderr
        return [x["messages"][-1]["content"] for x in lines_of(r.stdout)], summary(r.stderr)

    everything, s = export()
    assert len(everything) == 8 and s == (8, 0, {})
    # Oldest first, by instant: 2024-05-01 01:00+08:00 is 2024-04-30T17:00Z.
    assert everything[0] == "answer gpt-a 2024-05-01 01"

    only_a, s = export("-model", "gpt-a")
    assert only_a == [t for t in everything if "gpt-a" in t] and s[0] == 4

    # 2024-05-02 00:00 UTC: 2024-05-01 13:00+08:00 (05:00Z) is before; all of 05-02 -05:00 after.
    since_day, _ = export("-since", "2024-05-02")
    assert since_day == [t for t in everything if "2024-05-02" in t]
    # RFC 3339 with an offset: 2024-05-02T08:00:00-05:00 = 13:00Z; 01:00-05:00 (06:00Z) is before.
    since_exact, _ = export("-since", "2024-05-02T08:00:00-05:00")
    assert since_exact == ["answer gpt-a 2024-05-02 13", "answer gpt-b 2024-05-02 13"]
    # Inclusive: a row exactly at the bound is in.
    at_bound, _ = export("-since", "2024-05-02T13:00:00.123456789-05:00", "-model", "gpt-b")
    assert at_bound == ["answer gpt-b 2024-05-02 13"]
    both, s = export("-since=2024-05-02T00:00:00Z", "-model=gpt-b")
    assert both == ["answer gpt-b 2024-05-02 01", "answer gpt-b 2024-05-02 13"]
    assert s == (2, 0, {})
    none, s = export("-model", "gpt-none")
    assert none == [] and s == (0, 0, {})


def test_skips_are_counted_by_reason(binary, tmp_path):
    db = make_db(binary, tmp_path)
    at = "2024-06-01 10:00:00+00:00"
    ok = chat_body("m", "hi")
    insert(db, [
        {"at": at, "model": "m", "body": ok, "response": "hello"},
        {"at": at, "model": "m", "body": ok, "response": "hello", "status": 0},  # a Go-era row
        {"at": at, "model": "m", "body": ok, "response": "oops", "status": 500},
        {"at": at, "model": "m", "body": ok, "response": "part", "status": 200,
         "error": "upstream reset"},
        {"at": at, "model": "m", "body": ok, "response": "", "status": 200},
        {"at": at, "model": "m", "body": "not json", "response": "x"},
        {"at": at, "model": "m", "body": json.dumps({"model": "m", "prompt": "p"}),
         "response": "x"},
        {"at": at, "model": "m", "body": json.dumps({"model": "m", "messages": []}),
         "response": "x"},
        {"at": at, "model": "m", "body": None, "response": "x"},
        {"at": at, "model": "m", "body": ok, "response": "y" * (1024 * 1024)},
    ])
    r = run(binary, db, "-export", "-")
    assert r.returncode == 0, r.stderr
    assert len(lines_of(r.stdout)) == 2
    n, skipped, _ = summary(r.stderr)
    assert (n, skipped) == (2, 8)
    for want in ("4 not a chat exchange", "2 failed", "1 no response text", "1 truncated"):
        assert want in r.stderr, r.stderr


def test_bad_flags(binary, tmp_path):
    db = make_db(binary, tmp_path)
    r = run(binary, db, "-export", "-", "-since", "yesterday")
    assert r.returncode == 2 and "-since" in r.stderr
    r = run(binary, db, "-model", "m")
    assert r.returncode == 2 and "-export is missing" in r.stderr
    r = run(binary, tmp_path / "none.sqlite", "-export", "-")
    assert r.returncode == 1 and "no database" in r.stderr
    assert not (tmp_path / "none.sqlite").exists()
    r = run(binary, db, "-export", str(tmp_path / "no-such-dir" / "out.jsonl"))
    assert r.returncode == 1 and "cannot write" in r.stderr


def test_streams_a_large_table_without_loading_it(binary, tmp_path):
    """20,000 rows of 10 KiB: the export's memory stays near one row (peak RSS well under
    the 200 MB the table holds)."""
    db = make_db(binary, tmp_path)
    c = sqlite3.connect(str(db))
    body = chat_body("m", "z" * 10000)
    c.executemany("INSERT INTO records (id, created_at, body, response, model, status, error)"
                  " VALUES (?, '2024-06-01 10:00:00+00:00', ?, 'ok', 'm', 200, '')",
                  (("r%06d" % i, body) for i in range(20000)))
    c.commit()
    c.close()
    out = tmp_path / "big.jsonl"
    r = subprocess.run(["/usr/bin/time", "-f", "maxrss=%M", binary, "-database", str(db),
                        "-export", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert summary(r.stderr)[:2] == (20000, 0)
    m = re.search(r"maxrss=(\d+)", r.stderr)
    with open(binary, "rb") as f:
        asan = b"__asan_init" in f.read()  # its quarantine keeps freed rows resident
    if m and not asan:  # KiB
        assert int(m.group(1)) < 100 * 1024, r.stderr
    with open(out, encoding="utf-8") as f:
        assert sum(1 for _ in f) == 20000
