// A small SVG line chart: points [{t, v}] scaled to the box, the newest at
// the right; `add` appends a live point and redraws.

const NS = 'http://www.w3.org/2000/svg';
const W = 600, H = 140, PAD = 28;

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

export class Chart {
  constructor(parent, title, unit, max = 2000) {
    this.points = [];
    this.unit = unit;
    this.max = max;
    this.box = document.createElement('div');
    this.box.className = 'card chart';
    this.head = document.createElement('div');
    this.head.textContent = title;
    this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
    this.box.append(this.head, this.svg);
    parent.append(this.box);
    this.title = title;
  }

  set(points) { this.points = points.slice(-this.max); this.draw(); }

  add(t, v) {
    if (v === null || v === undefined) return;
    const last = this.points[this.points.length - 1];
    if (last && last.t >= t) return;
    this.points.push({ t, v });
    if (this.points.length > this.max) this.points.shift();
    this.draw();
  }

  draw() {
    this.svg.replaceChildren();
    this.box.dataset.points = String(this.points.length);
    const p = this.points;
    const last = p.length ? p[p.length - 1].v : null;
    this.head.textContent = `${this.title}: ${last === null ? '-' : last.toFixed(1) + this.unit} (${p.length} points)`;
    if (p.length < 2) return;
    const t0 = p[0].t, t1 = p[p.length - 1].t;
    let lo = Math.min(...p.map((x) => x.v)), hi = Math.max(...p.map((x) => x.v));
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const x = (t) => PAD + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD - 4);
    const y = (v) => H - 14 - ((v - lo) / (hi - lo)) * (H - 24);
    this.svg.append(svg('polyline', { points: p.map((q) => `${x(q.t).toFixed(1)},${y(q.v).toFixed(1)}`).join(' ') }));
    const label = (text, lx, ly) => { const el = svg('text', { x: lx, y: ly, class: 'axis' }); el.textContent = text; this.svg.append(el); };
    label(hi.toFixed(1), 2, 12);
    label(lo.toFixed(1), 2, H - 14);
    label(new Date(t0).toISOString().slice(11, 16), PAD, H - 2);
    label(new Date(t1).toISOString().slice(11, 16), W - 40, H - 2);
  }
}
