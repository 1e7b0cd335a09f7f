// wirestream's HTML report: draws sinks/html_report.py's data (the JSON block
// #report-data) with SVG and tables. No library, nothing fetched.
// With `D.live` (wirestream ui), the data is fetched again every `D.live.refresh_s` s and
// everything redrawn (the edge shown stays shown).
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const HEALTH = { healthy: "#2e7d32", degraded: "#f9a825", severe: "#c62828" };

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function us(v) {
    if (v === null || v === undefined) return "-";
    if (v >= 1e6) return (v / 1e6).toFixed(2) + " s";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + " ms";
    return Math.round(v) + " µs";
  }
  function pct(v) { return v === null || v === undefined ? "-" : (100 * v).toFixed(2) + " %"; }
  function source(text) { return el("p", { class: "source" }, text); }

  let shownEdge = null;  // [source, target] of the edge whose details are shown

  function draw(D) {
    const root = el("main", { id: "report" });
    document.getElementById("report")?.remove();
    document.body.append(root);
    root.append(el("h1", {}, D.title),
      el("nav", {}, el("a", { href: "#map" }, "Service map"), el("a", { href: "#series" }, "Over time"),
        el("a", { href: "#alerts" }, "Alerts"), el("a", { href: "#tables" }, "Tables")));

    // --- the service map -----------------------------------------------------------------
    const map = el("section", { id: "map" }, el("h2", {}, "Service map"),
      source("Nodes: the servers' services (wire.connections/transactions/queries/messaging: server_service or " +
        "server_workload, else server_ip:server_port) and the clients (client_workload, else client_ip). An edge: " +
        "what one client sent one service — connections (wire.connections), requests and errors (wire.transactions " +
        "status/error, wire.queries and wire.messaging status), latency P50/P99 (their latency_us), handshake RTT " +
        "(handshake_rtt_us), retransmission rate (retransmissions / data_packets), worst health band (health)." +
        (D.edges_total > D.edges.length ? ` The ${D.edges.length} busiest of ${D.edges_total} edges.` : "")));
    const legend = el("p", { class: "legend" });
    for (const [band, color] of Object.entries(HEALTH)) {
      const i = el("i"); i.style.background = color; legend.append(el("span", {}, i, band));
    }
    map.append(legend);
    // layers: a client that is no service first, each service one layer after its callers
    const layer = {};
    for (const n of D.nodes) layer[n.id] = n.service ? 1 : 0;
    for (let pass = 0; pass < 8; pass++) {
      for (const e of D.edges) {
        if (e.source !== e.target && layer[e.target] < layer[e.source] + 1 && layer[e.source] + 1 <= 6) {
          layer[e.target] = layer[e.source] + 1;
        }
      }
    }
    const layers = {};
    for (const n of D.nodes) (layers[layer[n.id]] = layers[layer[n.id]] || []).push(n);
    const keys = Object.keys(layers).map(Number).sort((a, b) => a - b);
    const width = Math.max(760, 300 * keys.length), rowH = 34;
    const height = 40 + rowH * Math.max(1, ...keys.map((k) => layers[k].length));
    const pos = {};
    keys.forEach((k, i) => {
      const col = layers[k].sort((a, b) => (b.requests + b.connections) - (a.requests + a.connections));
      const x = 90 + i * ((width - 260) / Math.max(1, keys.length - 1));
      col.forEach((n, j) => { pos[n.id] = { x: keys.length === 1 ? width / 2 : x, y: 30 + j * rowH }; });
    });
    const svg = sv("svg", { id: "service-map", width, height, viewBox: `0 0 ${width} ${height}` });
    for (const e of D.edges) {
      const a = pos[e.source], b = pos[e.target];
      const mid = (a.x + b.x) / 2;
      const d = e.source === e.target
        ? `M ${a.x} ${a.y} c 40 -30 40 30 0 0`
        : `M ${a.x} ${a.y} C ${mid} ${a.y + 14}, ${mid} ${b.y - 14}, ${b.x} ${b.y}`;  // (bowed: a level edge has height)
      const path = sv("path", { d, class: "edge", "data-edge": e.id, stroke: HEALTH[e.health] || "#90a4ae",
        "stroke-width": (1.5 + Math.log2(1 + e.requests + e.connections)).toFixed(1) });
      path.append(sv("title", {}, `${e.source} → ${e.target}: ${e.connections} connections, ${e.requests} requests, ` +
        `errors ${pct(e.error_rate)}, P99 ${us(e.latency_p99_us)}, retrans ${pct(e.retransmission_rate)}`));
      path.addEventListener("click", () => showEdge(e.id));
      // a wider, invisible stroke over it: an edge is easy to click
      const hit = sv("path", { d, class: "edge-hit", "data-edge": e.id, stroke: "transparent", "stroke-width": 12,
        fill: "none" });
      hit.addEventListener("click", () => showEdge(e.id));
      svg.append(path, hit);
    }
    for (const n of D.nodes) {
      const p = pos[n.id];
      const g = sv("g", { class: "node" + (n.client ? " client" : "") + (n.service ? " service" : ""),
        "data-node": n.id, transform: `translate(${p.x},${p.y})` });
      g.append(sv("circle", { r: (5 + Math.log2(1 + n.requests + n.connections)).toFixed(1) }));
      g.append(sv("text", { x: n.service && !n.client ? 12 : -12, y: 4,
        "text-anchor": n.service && !n.client ? "start" : "end" }, n.id));
      svg.append(g);
    }
    const scroll = el("div", { class: "scroll" }); scroll.append(svg);
    map.append(scroll, el("div", { id: "edge-detail" }, el("p", { class: "muted" }, "Click an edge for its connections and slowest requests.")));
    root.append(map);

    function showEdge(id) {
      const e = D.edges[id];
      shownEdge = [e.source, e.target];
      for (const p of svg.querySelectorAll(".edge")) p.classList.toggle("selected", Number(p.dataset.edge) === id);
      const box = document.getElementById("edge-detail");
      box.replaceChildren(el("h3", {}, `${e.source} → ${e.target}`),
        table("edge-metrics", ["connections", "requests", "errors", "error rate", "latency P50", "latency P99",
          "handshake P50", "handshake P99", "retrans rate", "health"],
          [[e.connections, e.requests, e.errors, pct(e.error_rate), us(e.latency_p50_us), us(e.latency_p99_us),
            us(e.handshake_rtt_p50_us), us(e.handshake_rtt_p99_us), pct(e.retransmission_rate), e.health || "-"]]),
        source(`Its connections, worst first (${e.conns.length} of ${e.connections}; wire.connections):`),
        table("edge-connections", ["client", "server", "state", "health", "retrans", "retrans rate", "handshake", "zero windows", "bytes"],
          e.conns.map((c) => [c.client, c.server, c.state, c.health, c.retransmissions, pct(c.retransmission_rate),
            us(c.handshake_rtt_us), c.zero_window, c.bytes])),
        source(`Its slowest requests (${e.slowest.length} of ${e.requests}; wire.transactions, wire.queries, wire.messaging):`),
        table("edge-requests", ["client", "request", "status", "latency"],
          e.slowest.map((c) => [c.client, c.what, c.status, us(c.latency_us)])));
    }

    // --- time series -----------------------------------------------------------------------
    const series = el("section", { id: "series" }, el("h2", {}, "Over time, per service"),
      source("wire.service-metrics (scope service): one point per window at window_start_ts_us — requests " +
        "(blue), errors_4xx + errors_5xx (red dots), latency_p99_us (orange) and latency_p50_us (orange, dashed) on " +
        "their own scale, retransmission_rate (purple, its own scale); wire.alerts at their " +
        "ts_us (red lines), on the same time axis for every service."));
    let t0 = Infinity, t1 = -Infinity;
    for (const s of D.series) for (const p of s.points) { t0 = Math.min(t0, p.t); t1 = Math.max(t1, p.t); }
    for (const a of D.alerts) if (a.t !== null) { t0 = Math.min(t0, a.t); t1 = Math.max(t1, a.t); }
    if (t1 <= t0) t1 = t0 + 1;
    const W = 560, H = 130, L = 46, R = 46, T = 10, B = 22;
    const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
    for (const s of D.series) {
      const maxReq = Math.max(1, ...s.points.map((p) => p.requests + p.connections));
      const maxP99 = Math.max(1, ...s.points.map((p) => p.latency_p99_us || 0));
      const y = (v) => H - B - (H - B - T) * v / maxReq;
      const y2 = (v) => H - B - (H - B - T) * v / maxP99;
      const chart = sv("svg", { class: "series", "data-service": s.service, width: W, height: H });
      chart.append(sv("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#bdbdbd" }));
      chart.append(sv("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, String(maxReq)));
      chart.append(sv("text", { x: W - R + 4, y: T + 8 }, us(maxP99)));
      chart.append(sv("text", { x: L, y: H - 6 }, new Date(t0 / 1000).toISOString().slice(11, 19)));
      chart.append(sv("text", { x: W - R, y: H - 6, "text-anchor": "end" }, new Date(t1 / 1000).toISOString().slice(11, 19)));
      for (const a of D.alerts) {
        if (a.t === null || (a.service && a.service !== s.service)) continue;
        const m = sv("line", { class: "alert-mark", x1: x(a.t), x2: x(a.t), y1: T, y2: H - B });
        m.append(sv("title", {}, `${a.kind} (${a.severity}): ${a.summary}`));
        chart.append(m);
      }
      const count = (p) => p.requests || p.connections;
      chart.append(sv("polyline", { class: "req", points: s.points.map((p) => `${x(p.t)},${y(count(p))}`).join(" ") }));
      chart.append(sv("polyline", { class: "p99", points: s.points.filter((p) => p.latency_p99_us !== null)
        .map((p) => `${x(p.t)},${y2(p.latency_p99_us)}`).join(" ") }));
      chart.append(sv("polyline", { class: "p50", points: s.points.filter((p) => p.latency_p50_us !== null)
        .map((p) => `${x(p.t)},${y2(p.latency_p50_us)}`).join(" ") }));
      const maxRt = Math.max(...s.points.map((p) => p.retransmission_rate || 0));
      if (maxRt > 0) {
        const y3 = (v) => H - B - (H - B - T) * 0.5 * v / maxRt;  // (its own scale, the lower half)
        chart.append(sv("polyline", { class: "retrans", points: s.points.map((p) =>
          `${x(p.t)},${y3(p.retransmission_rate || 0)}`).join(" ") }));
      }
      for (const p of s.points) {
        const c = sv("circle", { class: "point", cx: x(p.t), cy: y(count(p)), r: 2.5 });
        c.append(sv("title", {}, `${new Date(p.t / 1000).toISOString()}: ${p.requests} requests, ${p.connections} ` +
          `connections, ${p.errors} errors, P99 ${us(p.latency_p99_us)}, retrans ${pct(p.retransmission_rate)}`));
        chart.append(c);
        if (p.errors) chart.append(sv("circle", { class: "err", cx: x(p.t), cy: y(p.errors), r: 2 }));
      }
      series.append(el("div", { class: "chart" }, el("h3", {}, `${s.service} (${s.points.length} windows)`), chart));
    }
    if (!D.series.length) series.append(el("p", { class: "muted" }, "No service windows (analyze --no-windows?)."));
    root.append(series);

    // --- alerts and tables ---------------------------------------------------------------------
    const alerts = el("section", { id: "alerts" }, el("h2", {}, `Alerts (${D.alerts.length})`),
      source("wire.alerts: ts_us, service, kind, severity, summary."));
    alerts.append(table("alerts-table", ["time", "service", "kind", "severity", "summary"],
      D.alerts.map((a) => [a.t === null ? "-" : new Date(a.t / 1000).toISOString(), a.service, a.kind, a.severity, a.summary]),
      true));
    root.append(alerts);
    const tables = el("section", { id: "tables" }, el("h2", {}, "Tables"));
    for (const t of D.tables) {
      tables.append(el("h3", {}, t.caption),
        source(`${t.topic}: ${t.fields.join(", ")} (${t.rows.length} of ${t.total} records shown)`),
        table(`table-${t.name}`, t.columns, t.rows, true));
    }
    root.append(tables);
    if (D.live) root.append(source(`Live: the output topics as a consumer group of its own reads them (the newest ` +
      `records, bounded), redrawn every ${D.live.refresh_s} s; updated ${new Date().toISOString()}.`));
    const again = shownEdge && D.edges.find((e) => e.source === shownEdge[0] && e.target === shownEdge[1]);
    if (again) showEdge(again.id);

    // A table; `interactive`: a filter box, and headers that sort (numbers as numbers).
    function table(id, columns, rows, interactive) {
      const tbl = el("table", { id });
      const head = el("tr");
      columns.forEach((c) => head.append(el("th", {}, c)));
      const body = el("tbody");
      const draw = (rs) => body.replaceChildren(...rs.map((r) => {
        const tr = el("tr");
        r.forEach((v) => tr.append(el("td", typeof v === "number" ? { class: "num" } : {}, v === null || v === undefined ? "-" : v)));
        return tr;
      }));
      let shown = rows.slice();
      draw(shown);
      tbl.append(el("thead", {}, head), body);
      if (!interactive) return tbl;
      let sortCol = -1, asc = true;
      head.querySelectorAll("th").forEach((th, i) => th.addEventListener("click", () => {
        asc = sortCol === i ? !asc : true; sortCol = i;
        head.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        const key = (r) => r[i] === null || r[i] === undefined ? "" : r[i];
        shown.sort((a, b) => {
          const u = key(a), v = key(b);
          const c = typeof u === "number" && typeof v === "number" ? u - v : String(u).localeCompare(String(v));
          return asc ? c : -c;
        });
        draw(shown);
      }));
      const filter = el("input", { class: "filter", placeholder: "filter rows…", "data-table": id });
      filter.addEventListener("input", () => {
        const q = filter.value.toLowerCase();
        shown = rows.filter((r) => r.some((v) => String(v).toLowerCase().includes(q)));
        draw(shown);
      });
      const box = el("div", {}, filter, el("div", { class: "scroll" }, tbl));
      return box;
    }
  }  // draw

  const data = JSON.parse(document.getElementById("report-data").textContent);
  draw(data);
  if (data.live) {
    // the same query string (an access token, when the view asks for one)
    setInterval(() => fetch("data.json" + location.search, { cache: "no-store" })
      .then((r) => r.json()).then(draw).catch(() => {}), 1000 * data.live.refresh_s);
  }
})();
