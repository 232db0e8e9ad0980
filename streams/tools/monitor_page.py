"""The monitor's single HTML page: inline CSS, JS and SVG, no external resource (it must work offline)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pricing monitor</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
 header h1{font-size:18px;margin:0} header .muted{color:#aab}
 main{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:14px;padding:14px 20px}
 .card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:12px 16px;overflow-x:auto}
 .card h2{font-size:13px;text-transform:uppercase;letter-spacing:.05em;color:#667;margin:0 0 8px}
 .tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}
 .tile .v{font-size:24px;font-weight:600;font-variant-numeric:tabular-nums} .tile .l{color:#667;font-size:12px}
 table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
 th,td{text-align:right;padding:4px 8px;border-bottom:1px solid #eee} th:first-child,td:first-child{text-align:left}
 .bad{color:#c0392b} .ok{color:#1e8449} .err{color:#c0392b;font-weight:600}
 svg text{font-size:11px;fill:#556}
 .legend span{display:inline-block;margin-right:14px} .sw{display:inline-block;width:10px;height:10px;margin-right:4px}
</style></head><body>
<header><h1>pricing monitor</h1>
 <span>model <b id="model">-</b></span><span class="muted" id="model-when"></span>
 <span class="muted">updated <span id="updated">never</span></span><span id="error" class="err"></span></header>
<main>
 <section class="card" style="grid-column:1/-1"><h2>now</h2><div class="tiles">
  <div class="tile"><div class="v" id="records-rate">-</div><div class="l">records / s</div></div>
  <div class="tile"><div class="v" id="prices-rate">-</div><div class="l">prices / s</div></div>
  <div class="tile"><div class="v" id="dead-rate">-</div><div class="l">dead letters / s</div></div>
  <div class="tile"><div class="v" id="lag">-</div><div class="l">consumer lag (records)</div></div>
  <div class="tile"><div class="v" id="p50">-</div><div class="l">latency p50 (ms)</div></div>
  <div class="tile"><div class="v" id="p95">-</div><div class="l">latency p95 (ms)</div></div>
  <div class="tile"><div class="v" id="p99">-</div><div class="l">latency p99 (ms)</div></div>
  <div class="tile"><div class="v" id="records-total">-</div><div class="l">records since start</div></div>
 </div><div class="muted" id="lat-note" style="color:#667;font-size:12px;margin-top:6px"></div></section>
 <section class="card"><h2>throughput (per second)</h2><svg id="tput" width="100%" height="190"></svg>
  <div class="legend"><span><i class="sw" style="background:#2e86de"></i>records</span>
  <span><i class="sw" style="background:#27ae60"></i>prices</span><span><i class="sw" style="background:#c0392b"></i>dead letters</span></div></section>
 <section class="card"><h2>price / base price, by arm</h2><svg id="ratio" width="100%" height="190"></svg>
  <div class="legend"><span><i class="sw" style="background:#95a5a6"></i>control</span>
  <span><i class="sw" style="background:#e67e22"></i>uniform</span>
  <span><i class="sw" style="background:#8e44ad"></i>treatment</span></div></section>
 <section class="card"><h2>arms so far</h2><table id="arms"><thead><tr><th>arm</th><th>exposures</th>
  <th>purchases</th><th>conversion</th><th>revenue</th><th>profit</th><th>profit / exposure</th></tr></thead><tbody></tbody></table>
  <div style="color:#667;font-size:12px;margin-top:6px" id="arms-note"></div></section>
 <section class="card"><h2>dead letters by code</h2><svg id="dead" width="100%" height="150"></svg></section>
 <section class="card"><h2>workers</h2><table id="workers"><thead><tr><th>worker</th><th>model</th><th>loaded</th>
  <th>ready</th><th>lag</th><th>catalog</th></tr></thead><tbody></tbody></table></section>
 <section class="card"><h2>model versions</h2><table id="models"><thead><tr><th>version</th><th>first price seen</th>
  </tr></thead><tbody></tbody></table><div id="changes" style="color:#667;font-size:12px;margin-top:6px"></div></section>
</main>
<script>
const $ = id => document.getElementById(id);
const fmt = (v, d=0) => v == null || isNaN(v) ? '-' : Number(v).toLocaleString('en', {maximumFractionDigits: d, minimumFractionDigits: d});
const ago = t => t ? fmt((Date.now() / 1000 - t) / 60, 1) + ' min ago' : '-';
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function svg(el, w, h, body) { el.setAttribute('viewBox', `0 0 ${w} ${h}`); el.innerHTML = body; }
function lines(el, series, colors) {
  const w = 600, h = 190, l = 44, b = 20, pts = series.length;
  if (pts < 2) { svg(el, w, h, '<text x="10" y="20">waiting for two scrapes...</text>'); return; }
  const t0 = series[0][0], t1 = series[pts - 1][0];
  const top = Math.max(1, ...series.flatMap(r => r.slice(1)));
  const x = t => l + (w - l - 8) * (t - t0) / Math.max(1e-9, t1 - t0), y = v => h - b - (h - b - 8) * v / top;
  let out = `<line x1="${l}" y1="${h-b}" x2="${w-8}" y2="${h-b}" stroke="#ccd"/><text x="4" y="14">${fmt(top)}</text><text x="4" y="${h-b}">0</text>`;
  out += `<text x="${l}" y="${h-4}">${fmt((t1 - t0) / 60, 1)} min</text>`;
  colors.forEach((c, k) => {
    const d = series.map(r => `${x(r[0]).toFixed(1)},${y(r[k + 1]).toFixed(1)}`).join(' ');
    out += `<polyline fill="none" stroke="${c}" stroke-width="2" points="${d}"/>`;
  });
  svg(el, w, h, out);
}
function bars(el, labels, groups, colors, h) {
  const w = 600, l = 10, b = 22, n = labels.length, g = groups.length;
  const top = Math.max(1, ...groups.flat()), bw = Math.min(90, (w - l - 10) / Math.max(1, n));
  let out = `<line x1="${l}" y1="${h-b}" x2="${w-10}" y2="${h-b}" stroke="#ccd"/>`;
  labels.forEach((lab, i) => {
    groups.forEach((vals, k) => {
      const v = vals[i] || 0, bh = (h - b - 14) * v / top, x = l + i * bw + 2 + k * (bw - 4) / g;
      out += `<rect x="${x.toFixed(1)}" y="${(h-b-bh).toFixed(1)}" width="${((bw-4)/g - 1).toFixed(1)}" height="${bh.toFixed(1)}" fill="${colors[k]}"><title>${esc(lab)}: ${v}</title></rect>`;
    });
    if (n <= 12 || i % 2 === 0) out += `<text x="${(l + i * bw + bw / 2).toFixed(1)}" y="${h-6}" text-anchor="middle">${esc(lab)}</text>`;
  });
  out += `<text x="${w-12}" y="12" text-anchor="end">max ${fmt(top)}</text>`;
  svg(el, w, h, out);
}
function rows(id, html) { $(id).querySelector('tbody').innerHTML = html.join(''); }
async function refresh() {
  let s;
  try { s = await (await fetch('/api/state', {cache: 'no-store'})).json(); }
  catch (e) { $('error').textContent = 'monitor unreachable: ' + e; return; }
  const last = s.series && s.series.length ? s.series[s.series.length - 1] : null;
  $('records-rate').textContent = last ? fmt(last[1], 1) : '-';
  $('prices-rate').textContent = last ? fmt(last[2], 1) : '-';
  $('dead-rate').textContent = last ? fmt(last[3], 2) : '-';
  $('dead-rate').className = 'v ' + (last && last[3] > 0 ? 'bad' : '');
  const lat = s.latency || {};
  ['p50', 'p95', 'p99'].forEach(q => $(q).textContent = lat[q] == null ? '-' : fmt(lat[q] * 1000, 0));
  $('lat-note').textContent = lat.count ? `latency: Kafka timestamp of each clickstream record to its batch's prices acknowledged, ${fmt(lat.count)} records ` + (lat.window_s ? `in the last ${lat.window_s} s` : 'since the workers started') : '';
  $('records-total').textContent = fmt((s.totals || {}).records);
  const workers = s.workers || [];
  $('lag').textContent = workers.length ? fmt(workers.reduce((a, w) => a + (w.lag || 0), 0)) : '-';
  lines($('tput'), s.series || [], ['#2e86de', '#27ae60', '#c0392b']);
  const dl = s.dead_letters || {};
  bars($('dead'), Object.keys(dl).length ? Object.keys(dl) : ['none'], [Object.keys(dl).length ? Object.values(dl) : [0]], ['#c0392b'], 150);
  rows('workers', workers.map(w => w.up ? `<tr><td>${esc(w.url)}</td><td>${esc(w.version)}</td><td>${ago(w.loaded_at)}</td>` +
    `<td class="${Object.values(w.ready).every(x => x) ? 'ok' : 'bad'}">${Object.entries(w.ready).map(([k, v]) => (v ? '' : 'not ') + k).join(', ')}</td>` +
    `<td>${fmt(w.lag)}</td><td>${fmt(w.catalog_items)}</td></tr>` : `<tr><td>${esc(w.url)}</td><td colspan="5" class="bad">down: ${esc(w.error)}</td></tr>`));
  const up = workers.filter(w => w.up);
  $('model').textContent = up.length ? [...new Set(up.map(w => w.version))].join(', ') : '-';
  $('model-when').textContent = up.length ? 'loaded ' + ago(Math.max(...up.map(w => w.loaded_at || 0))) : '';
  $('changes').innerHTML = (s.model_changes || []).map(c => `${new Date(c.at * 1000).toLocaleTimeString()}: ${esc(c.worker)} ${c.from ? esc(c.from) + ' &rarr; ' : 'serving '}${esc(c.to)}`).join('<br>');
  const t = s.topics;
  if (t) {
    const e = t.ratio_edges, labels = [`<${e[0]}`, ...e.slice(0, -1).map(v => fmt(v, 3)), `>=${e[e.length-1]}`];
    bars($('ratio'), labels, [t.ratio_counts.control, t.ratio_counts.uniform, t.ratio_counts.treatment], ['#95a5a6', '#e67e22', '#8e44ad'], 190);
    rows('arms', Object.entries(t.arms).filter(([a, r]) => a !== 'none' || r.exposures).map(([a, r]) => `<tr><td>${a}</td><td>${fmt(r.exposures)}</td><td>${fmt(r.purchases)}</td>` +
      `<td>${r.conversion == null ? '-' : fmt(r.conversion * 100, 2) + ' %'}</td><td>${fmt(r.revenue, 2)}</td><td>${fmt(r.profit, 2)}</td><td>${fmt(r.profit_per_exposure, 3)}</td></tr>`));
    $('arms-note').textContent = `exposures: views with the worker's decision for the viewed item (none: no decision, base price shown); ` +
      `a purchase counts for the newest view of the same user and item at most ${fmt(t.window_s / 3600, 1)} h before it. ` +
      `Read: ${fmt(t.read.prices)} prices, ${fmt(t.read.clickstream)} clickstream events.`;
    rows('models', t.model_versions.map(m => `<tr><td>${esc(m.version)}</td><td>${new Date(m.first_seen * 1000).toLocaleString()}</td></tr>`));
    $('error').textContent = t.error || '';
  }
  $('updated').textContent = new Date(s.now * 1000).toLocaleTimeString();
  window.refreshS = s.refresh_s;
}
async function loop() { await refresh(); setTimeout(loop, 1000 * (window.refreshS || 3)); }
loop();
</script></body></html>
"""
