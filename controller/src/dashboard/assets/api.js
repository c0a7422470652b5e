// Talking to the controller: JSON over fetch with the session's CSRF token on
// every change, and a tiny DOM builder that only ever sets text (no HTML from data).

export const session = { who: null, auth: true, transport: {} };

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function answer(r) {
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, body.error || `${r.status} ${r.statusText}`);
  return body;
}

export async function get(path) {
  return answer(await fetch(`/api${path}`, { credentials: 'same-origin' }));
}

export async function post(path, body = {}) {
  const headers = { 'content-type': 'application/json' };
  if (session.who) headers['x-csrf-token'] = session.who.csrf;
  return answer(await fetch(`/api${path}`, {
    method: 'POST', credentials: 'same-origin', headers, body: JSON.stringify(body),
  }));
}

const ROLES = ['viewer', 'operator', 'admin'];
export function may(role) {
  return session.who !== null && ROLES.indexOf(session.who.role) >= ROLES.indexOf(role);
}

// h('td', {class: 'x', onclick: f}, 'text', child) builds an element.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function showError(e) {
  const box = document.getElementById('error');
  if (!e) { box.hidden = true; return; }
  box.textContent = e.message || String(e);
  box.hidden = false;
}

export function fmt(v, digits = 1, unit = '') {
  return v === null || v === undefined ? '-' : `${Number(v).toFixed(digits)}${unit}`;
}

export function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return new Date(ms).toISOString().replace('.000', '');
}

export function bytes(n) {
  if (!n) return '0';
  const u = ['B', 'kB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
