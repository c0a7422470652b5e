// The page: logs in, routes #/fleet, #/node/<id>, #/jobs and #/security to
// their views, and keeps one live stream (server-sent events) for the view shown.

import { get, post, session, showError, may } from './api.js';
import * as fleet from './fleet.js';
import * as node from './node.js';
import * as jobs from './jobs.js';
import * as security from './security.js';

const $ = (id) => document.getElementById(id);
let stream = null;

// Opens the live stream for `ids`; `onFleet` gets each update.
export function live(ids, onFleet) {
  if (stream) stream.close();
  stream = new EventSource(`/api/live?watch=${encodeURIComponent(ids.join(','))}`);
  stream.addEventListener('fleet', (e) => onFleet(JSON.parse(e.data)));
  stream.onopen = () => document.body.dataset.live = 'open';
  stream.onerror = () => document.body.dataset.live = 'retrying';
}

async function refreshSession() {
  const s = await get('/session');
  session.who = s.who;
  session.auth = s.auth;
  session.transport = s.transport;
  const notice = s.transport.refused || s.transport.notice;
  $('notice').hidden = !notice;
  $('notice').textContent = notice || '';
}

function showLoggedIn() {
  const who = session.who;
  $('login').hidden = who !== null;
  $('nav').hidden = who === null;
  $('logout').hidden = who === null || !session.auth;
  $('who').textContent = who ? `${who.name} (${who.role})` : '';
  for (const a of document.querySelectorAll('nav a[data-role]')) a.hidden = !may(a.dataset.role);
}

async function route() {
  showError(null);
  if (stream) { stream.close(); stream = null; }
  const page = $('page');
  page.replaceChildren();
  if (!session.who) return;
  const [, view, arg] = (location.hash || '#/fleet').split('/');
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === view);
  try {
    if (view === 'node' && arg) await node.show(page, decodeURIComponent(arg), live);
    else if (view === 'jobs') await jobs.show(page);
    else if (view === 'security') await security.show(page);
    else await fleet.show(page, live);
  } catch (e) {
    if (e.status === 401) { session.who = null; showLoggedIn(); }
    showError(e);
  }
}

async function start() {
  try { await refreshSession(); } catch (e) { showError(e); }
  showLoggedIn();
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      session.who = await post('/login', { token: $('token').value });
      $('token').value = '';
      showLoggedIn();
      await route();
    } catch (e) { showError(e); }
  });
  $('logout').addEventListener('click', async () => {
    try { await post('/logout'); } catch (e) { showError(e); }
    session.who = null;
    showLoggedIn();
    await route();
  });
  window.addEventListener('hashchange', route);
  await route();
}

start();
