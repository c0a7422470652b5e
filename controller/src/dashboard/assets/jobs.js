// Recent jobs: where each ran and why the router chose it, each step's time,
// the share of edge and cloud, joint-inference re-runs; a test job to submit.

import { get, post, h, may, showError } from './api.js';

const ms = (us) => `${(us / 1000).toFixed(1)} ms`;

function steps(t) {
  return `route ${ms(t.route_us)} · queued ${ms(t.queued_us)} · tokenize ${ms(t.tokenize_us)} · ` +
    `inference ${ms(t.inference_us)} · transport ${ms(t.transport_us)} · end to end ${ms(t.end_to_end_us)}`;
}

function table(jobs) {
  return h('div', { class: 'scroll' }, h('table', { id: 'jobs-table' },
    h('thead', {}, h('tr', {}, ['job', 'submitted', 'model', 'status', 'ran on', 'why', 'answer', 'steps', 'attempts'].map((t) => h('th', {}, t)))),
    h('tbody', {}, jobs.map((j) => h('tr', { 'data-job': j.job_id },
      h('td', { class: 'mono', title: j.job_id }, j.job_id.slice(0, 8)),
      h('td', {}, j.submitted_unix_ms ? new Date(j.submitted_unix_ms).toISOString().slice(11, 19) : '-'),
      h('td', {}, j.model), h('td', {}, j.status), h('td', {}, j.site), h('td', { class: 'wrap' }, j.reason),
      h('td', {}, j.error || (j.label ? `${j.label} (${Number(j.confidence).toFixed(2)})` : j.embedding.length ? `embedding ${j.embedding.length}` : '')),
      h('td', { class: 'muted wrap' }, steps(j.timings)),
      h('td', {}, j.attempts.map((a) => `${a.attempt}: ${a.site} ${a.status}`).join('; ')))))));
}

export async function show(page) {
  const box = h('div');
  async function reload() {
    const r = await get('/jobs?limit=50');
    const total = r.share.edge + r.share.cloud;
    const pct = (n) => (total ? `${Math.round((100 * n) / total)}%` : '-');
    box.replaceChildren(
      h('div', { class: 'tiles' },
        h('div', { class: 'tile' }, h('b', {}, r.jobs.length), h('span', {}, 'recent jobs')),
        h('div', { class: 'tile' }, h('b', {}, pct(r.share.edge)), h('span', {}, `on the edge (${r.share.edge})`)),
        h('div', { class: 'tile' }, h('b', {}, pct(r.share.cloud)), h('span', {}, `on the cloud tier (${r.share.cloud})`)),
        h('div', { class: 'tile' }, h('b', {}, r.joint), h('span', {}, 'joint-inference re-runs'))),
      table(r.jobs));
  }
  page.append(h('h1', {}, 'Jobs'));
  if (may('operator')) {
    const model = h('input', { name: 'model', value: 'severity', size: 12 });
    const text = h('input', { name: 'text', value: 'disk full on /var', size: 30 });
    const out = h('span', { class: 'muted', id: 'job-answer' });
    page.append(h('form', { class: 'inline', id: 'job-form', onsubmit: async (e) => {
      e.preventDefault();
      out.textContent = 'running…';
      try {
        const j = await post('/jobs', { model: model.value, text: text.value });
        out.textContent = `${j.status}: ${j.label || j.error} on ${j.site}`;
        await reload();
      } catch (err) { out.textContent = ''; showError(err); }
    } }, h('label', {}, 'Model', model), h('label', {}, 'Text', text), h('button', { type: 'submit' }, 'Submit test job'), out));
  }
  page.append(box, h('p', {}, h('button', { class: 'plain', type: 'button', onclick: () => reload().catch(showError) }, 'Refresh')));
  await reload();
}
