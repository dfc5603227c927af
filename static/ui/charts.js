// Two small charts for the operator page, drawn as SVG with createElementNS (no library, no innerHTML, no inline
// style: colours come from admin.css classes). Each has a text alternative: the SVG is role="img", named by its
// <title> and described by the sentence shown under it, and a table of the numbers sits below in a <details>.
// The axes' labels are HTML beside the SVG, not SVG text: text drawn over an image has no background an audit
// (or a user's contrast setting) can know, and these must read at 4.5:1 like any text.
import { labelCells } from "./admin-views.js";
import { h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 360;
const H = 140;
const PAD = 4; // above the top grid line and below the bottom one, so both show whole
let uid = 0;

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

/** A round number at or above `value` (1, 2, 5 × a power of ten), so the axis reads easily. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * p).find((n) => n >= value);
}

/** 0.25, 2.5, 12: as many decimals as the value needs, at most two (below 1) or one (below 10). */
const num = (v) => (Number.isInteger(v) ? String(v) : String(Number(v.toFixed(v < 1 ? 2 : v < 10 ? 1 : 0))));

/** What both charts share: the SVG (title, grid lines), the axes' labels around it, the sentence under it. */
function frame(minutes, { title, desc, max, unit = "" }) {
  const id = `chart-${++uid}`;
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-labelledby": `${id}-title ${id}-desc`,
    class: "chart-svg",
  });
  svg.append(s("title", { id: `${id}-title` }, title));
  const y = (v) => PAD + (H - 2 * PAD) * (1 - v / max);
  const slot = W / minutes.length;
  const x = (i) => (i + 0.5) * slot;
  for (const v of [0, max / 2, max]) svg.append(s("line", { x1: 0, x2: W, y1: y(v), y2: y(v), class: "grid" }));
  const last = minutes.length - 1;
  const plot = h(
    "div",
    { class: "plot" },
    h("div", { class: "y-axis", "aria-hidden": "true" }, [max, max / 2, 0].map((v) => h("span", { text: num(v) + unit }))),
    svg,
    h("div", { class: "x-axis", "aria-hidden": "true" }, [0, Math.floor(last / 2), last].map((i) => h("span", { text: clock(minutes[i].start) }))),
  );
  const said = h("p", { id: `${id}-desc`, class: "chart-desc", text: desc });
  return { svg, plot, said, x, y, slot };
}

function legend(items) {
  return h(
    "ul",
    { class: "legend" },
    items.map((it) => h("li", {}, h("span", { class: `swatch ${it.cls}`, "aria-hidden": "true" }), it.label)),
  );
}

function numbers(caption, head, rows) {
  if (!rows.length) return null;
  return h(
    "details",
    { class: "numbers" },
    h("summary", { text: "The numbers" }),
    h(
      "div",
      { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${caption}, table` },
      h(
        "table",
        {},
        h("caption", { text: caption }),
        h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col", text: t })))),
        h(
          "tbody",
          {},
          labelCells(
            head,
            rows.map((r) => h("tr", {}, r.map((c, i) => h(i ? "td" : "th", i ? {} : { scope: "row" }, c)))),
          ),
        ),
      ),
    ),
  );
}

const STATUSES = [
  { key: "completed", label: "Completed", cls: "k-completed" },
  { key: "failed", label: "Failed", cls: "k-failed" },
  { key: "cancelled", label: "Cancelled", cls: "k-cancelled" },
  { key: "expired", label: "Expired", cls: "k-expired" },
];

/** Jobs finished per minute, one stacked bar a minute (completed at the bottom). */
export function finishedChart(minutes) {
  const totals = Object.fromEntries(STATUSES.map((st) => [st.key, 0]));
  let busiest = null;
  for (const m of minutes) {
    const n = STATUSES.reduce((sum, st) => sum + m.finished[st.key], 0);
    for (const st of STATUSES) totals[st.key] += m.finished[st.key];
    if (n && (!busiest || n > busiest.n)) busiest = { n, start: m.start };
  }
  const words = STATUSES.map((st) => `${totals[st.key]} ${st.label.toLowerCase()}`).join(", ");
  const desc = busiest
    ? `In the last hour: ${words}. Busiest minute: ${clock(busiest.start)}, with ${busiest.n}.`
    : "No job finished in the last hour.";
  const { svg, plot, said, x, y, slot } = frame(minutes, {
    title: "Jobs finished per minute, by status",
    desc,
    max: niceMax(busiest?.n || 0),
  });
  const width = Math.max(1, slot * 0.72);
  minutes.forEach((m, i) => {
    let top = 0;
    for (const st of STATUSES) {
      const n = m.finished[st.key];
      if (!n) continue;
      const y0 = y(top);
      top += n;
      const bar = s("rect", { x: x(i) - width / 2, y: y(top), width, height: y0 - y(top), class: `bar ${st.cls}` });
      bar.append(s("title", {}, `${clock(m.start)}: ${n} ${st.label.toLowerCase()}`));
      svg.append(bar);
    }
  });
  const rows = minutes
    .filter((m) => STATUSES.some((st) => m.finished[st.key]))
    .map((m) => [clock(m.start), ...STATUSES.map((st) => String(m.finished[st.key]))]);
  return h(
    "figure",
    { class: "chart-figure" },
    h("figcaption", { text: "Jobs finished per minute" }),
    plot,
    legend(STATUSES),
    said,
    numbers("Jobs finished per minute (minutes with none left out)", ["Minute", ...STATUSES.map((st) => st.label)], rows),
  );
}

const SERIES = [
  { label: "Wait, mean", cls: "k-wait", get: (m) => m.wait?.average },
  { label: "Wait, p95", cls: "k-wait p95", get: (m) => m.wait?.p95 },
  { label: "Run, mean", cls: "k-run", get: (m) => m.run?.average },
  { label: "Run, p95", cls: "k-run p95", get: (m) => m.run?.p95 },
];

const secs = (v) => (v === null || v === undefined ? "–" : `${num(v)} s`);

/** Wait (queued → started) and run (started → completed) times per minute: mean and 95th percentile lines. */
export function timesChart(minutes) {
  let max = 0;
  for (const m of minutes) for (const se of SERIES) max = Math.max(max, se.get(m) ?? 0);
  const waits = minutes.filter((m) => m.wait);
  const runs = minutes.filter((m) => m.run);
  const worst = (list, key) => Math.max(...list.map((m) => m[key].p95));
  const desc =
    waits.length || runs.length
      ? `In the last hour: ${waits.length ? `waits up to ${secs(worst(waits, "wait"))} (p95 of a minute)` : "no job started"}; ` +
        `${runs.length ? `runs up to ${secs(worst(runs, "run"))}` : "no job completed"}.`
      : "No job started or completed in the last hour.";
  const { svg, plot, said, x, y } = frame(minutes, {
    title: "Wait and run time per minute, mean and 95th percentile",
    desc,
    max: niceMax(max),
    unit: " s",
  });
  for (const se of SERIES) {
    let d = "";
    let open = false;
    minutes.forEach((m, i) => {
      const v = se.get(m);
      if (v === null || v === undefined) {
        open = false;
        return;
      }
      d += `${open ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)} `;
      open = true;
      svg.append(s("circle", { cx: x(i), cy: y(v), r: 2.2, class: `dot ${se.cls}` }));
    });
    if (d) svg.append(s("path", { d: d.trim(), class: `line ${se.cls}` }));
  }
  const rows = minutes
    .filter((m) => m.wait || m.run)
    .map((m) => [clock(m.start), ...SERIES.map((se) => secs(se.get(m)))]);
  return h(
    "figure",
    { class: "chart-figure" },
    h("figcaption", { text: "Wait and run time" }),
    plot,
    legend(SERIES),
    said,
    numbers("Wait and run time per minute, in seconds (minutes with none left out)", ["Minute", ...SERIES.map((se) => se.label)], rows),
  );
}
