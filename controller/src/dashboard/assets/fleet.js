// The fleet: counts by state and power profile, and the node table, paged,
// sorted and filtered on the server, its rows kept current by the live stream.

import { get, h, fmt, ago, bytes } from './api.js';

const COLUMNS = [
  ['node', 'id'], ['state', 'state'], ['profile', 'profile'], ['battery', 'battery'], ['SoC temp', 'temp'],
  ['CPU', 'cpu'], ['spool', 'backlog'], ['last seen', 'last_seen'], ['agent', 'version'], ['labels', null],
];
const query = { state: '', profile: '', label: '', q: '', sort: 'id', desc: false, page: 0 };

function tiles(counts) {
  const tile = (n, what, key) => h('div', { class: 'tile', 'data-count': key }, h('b', {}, n), h('span', {}, what));
  return h('div', { class: 'tiles', id: 'tiles' },
    tile(counts.total, 'nodes', 'total'),
    Object.entries(counts.by_state).map(([k, n]) => tile(n, k, `state-${k}`)),
    Object.entries(counts.by_profile).map(([k, n]) => tile(n, k, `profile-${k}`)));
}

function cells(r) {
  const battery = r.battery_pct === null ? '-' : `${fmt(r.battery_pct, 0, '%')}${r.on_battery ? ' on battery' : ' charging'}`;
  const labels = Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(', ');
  return [
    h('td', {}, h('a', { href: `#/node/${encodeURIComponent(r.node_id)}` }, r.node_id)),
    h('td', { class: `state-${r.state}`, 'data-col': 'state' }, r.state),
    h('td', { class: `profile-${r.profile}`, 'data-col': 'profile' }, r.profile),
    h('td', {}, battery), h('td', {}, fmt(r.soc_temp_c, 1, ' °C')), h('td', {}, fmt(r.cpu_pct, 0, '%')),
    h('td', { title: `${r.batches_unacked} batches not acknowledged` }, bytes(r.spool_bytes)),
    h('td', { title: new Date(r.last_seen_unix_ms).toISOString() }, ago(r.last_seen_unix_ms)),
    h('td', {}, r.agent_version), h('td', {}, labels),
  ];
}

function rowEl(r) { return h('tr', { 'data-node': r.node_id }, cells(r)); }

function filters(reload) {
  const sel = (name, options) => h('select', { name, onchange: (e) => { query[name] = e.target.value; query.page = 0; reload(); } },
    options.map((o) => h('option', { value: o, selected: query[name] === o }, o || `any ${name}`)));
  const text = (name, placeholder) => h('input', { name, placeholder, value: query[name],
    onchange: (e) => { query[name] = e.target.value.trim(); query.page = 0; reload(); } });
  return h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    sel('state', ['', 'online', 'offline', 'unknown']),
    sel('profile', ['', 'performance', 'balanced', 'saver', 'critical', 'unknown']),
    text('label', 'label key=value'), text('q', 'search node id'));
}

export async function show(page, live) {
  const tilesBox = h('div');
  const body = h('tbody');
  const pager = h('div', { class: 'pager' });
  const head = h('thead');
  const headRow = () => h('tr', {}, COLUMNS.map(([title, key]) => h('th', {
    class: key ? 'sortable' : null, 'aria-sort': key === query.sort ? (query.desc ? 'descending' : 'ascending') : null,
    onclick: key ? () => { query.desc = query.sort === key ? !query.desc : false; query.sort = key; reload(); } : null,
  }, title, key === query.sort ? (query.desc ? ' ▼' : ' ▲') : '')));
  async function reload() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== '' && v !== false) params.set(k, v);
    const p = await get(`/fleet?${params}`);
    head.replaceChildren(headRow());
    tilesBox.replaceChildren(tiles(p));
    body.replaceChildren(...p.rows.map(rowEl));
    const pages = Math.max(1, Math.ceil(p.matching / p.per_page));
    pager.replaceChildren(
      h('button', { class: 'plain', disabled: p.page === 0, onclick: () => { query.page -= 1; reload(); } }, '‹ prev'),
      h('span', {}, `page ${p.page + 1} of ${pages} · ${p.matching} of ${p.total} nodes`),
      h('button', { class: 'plain', disabled: p.page + 1 >= pages, onclick: () => { query.page += 1; reload(); } }, 'next ›'));
    live(p.rows.map((r) => r.node_id), (u) => {
      tilesBox.replaceChildren(tiles(u.counts));
      for (const r of u.rows) {
        const old = body.querySelector(`tr[data-node="${CSS.escape(r.node_id)}"]`);
        if (old) old.replaceWith(rowEl(r));
      }
    });
  }
  page.append(h('h1', {}, 'Fleet'), tilesBox, filters(reload),
    h('div', { class: 'scroll' }, h('table', { id: 'fleet-table' }, head, body)), pager);
  await reload();
}
