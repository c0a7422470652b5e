// One node: live charts (raw for 15 minutes, rollups for a day or a week),
// its power profile over time and its events, desired against reported
// state, recent jobs, enrollment and keys, and the operator's actions.

import { get, post, h, may, fmt, ago, showError } from './api.js';
import { Chart } from './chart.js';

const METRICS = [
  ['cpu.usage_pct', 'CPU', '%', 'cpu_pct'],
  ['soc.temp_c', 'SoC temperature', ' °C', 'soc_temp_c'],
  ['power.battery_soc_pct', 'Battery', '%', 'battery_pct'],
  ['power.profile', 'Power profile (1 performance … 4 critical)', '', null],
];
const PROFILE_NUMBER = { performance: 1, balanced: 2, saver: 3, critical: 4 };

function dl(pairs) {
  return h('dl', {}, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '-')]));
}

function actions(id, d, reload) {
  const box = h('div', { class: 'card', id: 'actions' }, h('h2', {}, 'Actions'));
  if (may('operator')) {
    const policy = h('textarea', { name: 'power_policy_toml', rows: 4, cols: 40, placeholder: 'saver_below_pct = 50' },
      d.desired ? d.desired.power_policy_toml : '');
    box.append(h('form', { class: 'inline', id: 'policy-form', onsubmit: async (e) => {
      e.preventDefault();
      try { await post(`/nodes/${encodeURIComponent(id)}/policy`, { power_policy_toml: policy.value }); await reload(); }
      catch (err) { showError(err); }
    } }, h('label', {}, 'Power policy (TOML)', policy), h('button', { type: 'submit' }, 'Set power policy')));
  }
  if (may('admin')) {
    const act = (label, path, question) => h('button', { class: 'danger', type: 'button', 'data-action': path, onclick: async () => {
      if (!window.confirm(question)) return;
      try { await post(`/nodes/${encodeURIComponent(id)}/${path}`); await reload(); } catch (err) { showError(err); }
    } }, label);
    box.append(h('p', {}, act('Rotate WireGuard key', 'rotate-key', `Rotate the WireGuard key of ${id}?`), ' ',
      act('Revoke node', 'revoke', `Revoke ${id}? It can no longer send anything and must enroll again.`)));
  }
  if (!may('operator')) box.append(h('p', { class: 'muted' }, 'Your role (viewer) can look, not act.'));
  return box;
}

function jobsTable(jobs) {
  return h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {},
    ['job', 'model', 'status', 'answer', 'why'].map((t) => h('th', {}, t)))),
    h('tbody', {}, jobs.map((j) => h('tr', {}, h('td', { class: 'mono' }, j.job_id.slice(0, 8)), h('td', {}, j.model),
      h('td', {}, j.status), h('td', {}, j.label), h('td', { class: 'wrap' }, j.reason))))));
}

async function loadCharts(id, charts, range) {
  await Promise.all(METRICS.map(async ([metric], i) => {
    const r = await get(`/nodes/${encodeURIComponent(id)}/telemetry?metric=${metric}&range=${range}`);
    charts[i].set(r.points.map((p) => ({ t: p.time_unix_ms, v: p.avg })));
  }));
}

export async function show(page, id, live) {
  const d = await get(`/nodes/${encodeURIComponent(id)}`);
  const n = d.node;
  const state = h('span', { class: `state-${n.state}`, id: 'node-state' }, n.state);
  const profile = h('span', { class: `profile-${d.profile}`, id: 'node-profile' }, d.profile);
  page.append(h('h1', {}, `Node ${id} · `, state, ' · ', profile));
  const range = h('select', { id: 'range' }, ['15m', '24h', '7d'].map((r) => h('option', { value: r }, r)));
  const chartBox = h('div', { class: 'grid', id: 'charts' });
  page.append(h('form', { class: 'inline' }, h('label', {}, 'Range', range)), chartBox);
  const charts = METRICS.map(([, title, unit]) => new Chart(chartBox, title, unit));
  range.addEventListener('change', () => loadCharts(id, charts, range.value).catch(showError));
  await loadCharts(id, charts, '15m');
  // Raw samples arrive between statuses: the last 15 minutes are asked again every 5 s.
  const poll = setInterval(() => {
    if (!document.body.contains(chartBox)) clearInterval(poll);
    else if (range.value === '15m') loadCharts(id, charts, '15m').catch(() => {});
  }, 5000);

  const reported = d.desired ? d.desired.reported : null;
  const v = n.vitals;
  page.append(h('div', { class: 'grid' },
    h('div', { class: 'card' }, h('h2', {}, 'Status'), dl([
      ['last seen', ago(n.last_seen_unix_ms)], ['agent', n.agent_version], ['host', n.hostname],
      ['CPU', fmt(v.cpu_usage_pct, 0, '%')], ['memory', fmt(v.mem_used_pct, 0, '%')],
      ['battery', fmt(v.battery_soc_pct, 0, '%')], ['on battery', String(v.on_battery)],
      ['spool unacked batches', n.counters.batches_unacked], ['samples stored', n.samples_stored],
      ['labels', Object.entries(n.labels).map(([k, x]) => `${k}=${x}`).join(', ')]])),
    h('div', { class: 'card', id: 'desired' }, h('h2', {}, 'Desired vs reported'), d.desired && d.desired.version ? dl([
      ['desired version', d.desired.version], ['applied version', reported.applied_version],
      ['rejected', reported.rejected_version ? `${reported.rejected_version}: ${reported.rejected_reason}` : 'none'],
      ['interval', d.desired.telemetry_interval_ms ? `${d.desired.telemetry_interval_ms} ms` : 'agent default'],
      ['power policy', h('pre', { class: 'mono' }, d.desired.power_policy_toml || '(agent default)')]])
      : h('p', { class: 'muted' }, 'No desired state set: the node runs its own config.')),
    h('div', { class: 'card' }, h('h2', {}, 'Enrollment and keys'), d.identity ? dl([
      ['enrolled', d.identity.enrolled], ['revoked', d.identity.revoked || 'no'],
      ['overlay address', d.identity.overlay_address], ['signing key', h('span', { class: 'mono' }, d.identity.signing_key)],
      ['WireGuard key', h('span', { class: 'mono' }, d.identity.wg_public_key)],
      ['WireGuard rotation', d.identity.wg_next_key ? `pending (generation ${d.wg_generation})` : `generation ${d.wg_generation}`],
      ['controller key held', `generation ${d.controller_key_generation}`]])
      : h('p', { class: 'muted' }, 'Not enrolled (the controller does not require enrollment).')),
    actions(id, d, () => route(page, id, live))));
  page.append(h('h2', {}, 'Events (newest first)'), h('ul', { id: 'events' },
    d.events.length ? d.events.map((e) => h('li', {}, `${e.time} ${e.severity} ${e.kind}: ${e.message}`)) : h('li', { class: 'muted' }, 'none since the controller started')));
  page.append(h('h2', {}, 'Recent jobs'), jobsTable(d.jobs));

  live([id], (u) => {
    for (const r of u.rows) {
      if (r.node_id !== id) continue;
      state.textContent = r.state; state.className = `state-${r.state}`;
      profile.textContent = r.profile; profile.className = `profile-${r.profile}`;
      if (range.value !== '15m') continue;
      METRICS.forEach(([, , , field], i) => {
        const value = field ? r[field] : PROFILE_NUMBER[r.profile];
        charts[i].add(r.last_seen_unix_ms, value);
      });
    }
  });
}

function route(page, id, live) {
  page.replaceChildren();
  return show(page, id, live);
}
