"""The bounded label tables of /metrics: past 64 model names the rest count as "other", and
the log says so (rate-limited), so an operator who sees model="other" finds the reason."""

from routetest import wait_until


def test_full_model_table_is_logged_once(proxy_factory, mock):
    p = proxy_factory(upstreams=[("sk-metrics-secret", mock.endpoint())])
    for i in range(64):
        assert p.chat(model="model-%02d" % i).status == 200
    assert "label table" not in p.stderr_text()
    for i in range(64, 70):
        assert p.chat(model="model-%02d" % i).status == 200

    def logged():
        return [l for l in p.stderr_text().splitlines() if "label table" in l]

    lines = wait_until(logged, message="the full model table logged")
    assert "64 model names is full" in lines[0], lines
    assert len(lines) == 1, lines  # rate-limited: six refusals, one line
