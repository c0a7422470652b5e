// Admins: API tokens and bootstrap tokens (a new secret is shown once), and the audit log.

import { get, post, h, showError } from './api.js';

function secretBox(what, secret) {
  return h('div', { class: 'secret', id: 'new-secret' }, `${what} (shown once, copy it now): `, h('code', {}, secret));
}

export async function show(page) {
  const fresh = h('div');
  const box = h('div');
  async function act(path, body) {
    try { const r = await post(path, body); await reload(); return r; } catch (e) { showError(e); return null; }
  }
  async function reload() {
    const [s, a] = await Promise.all([get('/security'), get('/audit?limit=100')]);
    box.replaceChildren(
      h('h2', {}, 'API tokens'),
      h('div', { class: 'scroll' }, h('table', { id: 'api-tokens' }, h('thead', {}, h('tr', {}, ['name', 'role', 'state', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, s.api_tokens.map((t) => h('tr', {}, h('td', {}, t.name), h('td', {}, t.role), h('td', {}, t.revoked ? 'revoked' : 'valid'),
          h('td', {}, t.revoked ? '' : h('button', { class: 'danger', type: 'button', onclick: () => {
            if (window.confirm(`Revoke the API token ${t.name}? Its sessions end too.`)) act(`/api-tokens/${encodeURIComponent(t.name)}/revoke`);
          } }, 'Revoke'))))))),
      h('h2', {}, 'Bootstrap tokens'),
      h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, ['id', 'state', 'expires', 'used by', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, s.bootstrap_tokens.map((t) => h('tr', {}, h('td', { class: 'mono' }, t.token_id), h('td', {}, t.state), h('td', {}, t.expires),
          h('td', {}, t.used_by), h('td', {}, t.state === 'valid' ? h('button', { class: 'danger', type: 'button', onclick: () => {
            if (window.confirm(`Revoke bootstrap token ${t.token_id}?`)) act(`/bootstrap-tokens/${encodeURIComponent(t.token_id)}/revoke`);
          } }, 'Revoke') : '')))))),
      h('h2', {}, 'Audit log (newest first)'),
      h('div', { class: 'scroll' }, h('table', { id: 'audit' }, h('thead', {}, h('tr', {}, ['at', 'actor', 'action', 'target', 'result'].map((t) => h('th', {}, t)))),
        h('tbody', {}, a.records.map((r) => h('tr', {}, h('td', {}, new Date(r.at_unix_ms).toISOString().replace('.000', '')),
          h('td', {}, r.actor), h('td', {}, r.action), h('td', {}, r.target), h('td', {}, r.result)))))));
  }
  const name = h('input', { name: 'name', placeholder: 'name', required: true });
  const role = h('select', { name: 'role' }, ['viewer', 'operator', 'admin'].map((r) => h('option', { value: r }, r)));
  const ttl = h('input', { name: 'ttl_s', type: 'number', value: 3600, min: 60 });
  page.append(h('h1', {}, 'Security'),
    h('form', { class: 'inline', id: 'api-token-form', onsubmit: async (e) => {
      e.preventDefault();
      const r = await act('/api-tokens', { name: name.value.trim(), role: role.value });
      if (r) fresh.replaceChildren(secretBox(`API token ${r.name} (${r.role})`, r.token));
    } }, h('label', {}, 'New API token', name), h('label', {}, 'Role', role), h('button', { type: 'submit' }, 'Create')),
    h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      const r = await act('/bootstrap-tokens', { ttl_s: Number(ttl.value) });
      if (r) fresh.replaceChildren(secretBox(`Bootstrap token ${r.token_id}`, r.token));
    } }, h('label', {}, 'Bootstrap token lifetime (s)', ttl), h('button', { type: 'submit' }, 'Create')),
    fresh, box);
  await reload();
}
