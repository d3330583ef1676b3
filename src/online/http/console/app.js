// propensity web console: hash-routed views over the public /v1 JSON API.
// Plain ES2020, no dependencies; charts are SVG built with createElementNS.
'use strict';

const TOKEN_KEY = 'propensity.token';
const SVG_NS = 'http://www.w3.org/2000/svg';
const EVENT_TYPES = ['view', 'cart', 'remove_from_cart', 'purchase'];
const EVENT_COLORS = { view: '#4e79a7', cart: '#f28e2b', remove_from_cart: '#e15759', purchase: '#59a14f' };
const MAX_POINTS = 240; // two minutes of polls
const LIVE_MS = 500; // twice a second: a sale shows well within the 2 s the shop expects
const OUTCOMES_MS = 5000;

// Global state: authorisation, the current route, and what each view holds.
const state = {
  auth: 'unknown',   // 'unknown' | 'yes' | 'no'
  authEpoch: 0,      // bumped on every 401 so late answers are dropped
  routeGen: 0,       // bumped on every route change so stale loaders stop
  view: null,
  overview: null,    // { built, points, prev, timer, inFlight, lastOutcomes, outcomesInFlight }
  session: null,     // { key, data, scores, scoreError, selected }
};

const $ = (sel, root = document) => root.querySelector(sel);

/* ---------------------------------------------------------------- helpers */

// Escapes a string for HTML (we build nodes with textContent; kept for any string markup).
function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

// Builds an HTML element: h('td', {class: 'num'}, 'text', childNode, [more]). Strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  appendAll(el, children);
  return el;
}

// Builds an SVG element with attributes and optional text content.
function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  if (text != null) el.textContent = String(text);
  return el;
}

// Appends children (nodes, strings, numbers, nested arrays; null skipped) to a parent node.
function appendAll(parent, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    parent.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return parent;
}

// Replaces all children of an element.
function fill(el, ...children) {
  if (!el) return el;
  el.replaceChildren();
  return appendAll(el, children);
}

const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
// Formats a count with thousands separators.
const fmtInt = (x) => (isNum(x) ? x.toLocaleString('en-US') : '—');
// Formats money with two decimals.
const fmtMoney = (x) => (isNum(x) ? x.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 }) : '—');
// Formats a number with a fixed number of decimals.
const fmtFixed = (x, d) => (isNum(x) ? x.toFixed(d) : '—');
// Formats a propensity (3 decimals).
const fmtProp = (x) => fmtFixed(x, 3);
// Formats a 0..1 rate as a percentage.
const fmtPct = (x, d = 1) => (isNum(x) ? `${(x * 100).toFixed(d)}%` : '—');
// Formats a feature value or threshold compactly (at most 3 decimals, no trailing zeros).
const fmtNum = (x) => (isNum(x) ? String(+x.toFixed(3)) : x == null ? 'missing' : String(x));
// Shows a string field or a dash.
const txt = (x) => (x == null || x === '' ? '—' : String(x));

// Parses "YYYY-MM-DD HH:MM:SS UTC" (or ISO) into a Date; null when it cannot.
function parseUtc(str) {
  if (typeof str !== 'string') return null;
  const m = str.trim().match(/^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d+)?\s*(UTC|Z)?$/);
  const d = m ? new Date(`${m[1]}T${m[2]}${m[3] || ''}Z`) : new Date(str);
  return Number.isNaN(d.getTime()) ? null : d;
}

// Formats a Date as "YYYY-MM-DD HH:MM:SS UTC", the API's time format.
function formatUtc(d) {
  return `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

// Shortens a long id for chart labels ("…04856").
function shortId(id) {
  const str = String(id ?? '');
  return str.length > 7 ? `…${str.slice(-5)}` : str;
}

// Rounds a maximum up to 1, 2 or 5 times a power of ten, for axis ticks.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// Builds the hash for a session (and optionally a product) with each part URL-encoded.
function sessionHash(userId, userSession, productId) {
  let hash = `#/session/${encodeURIComponent(userId)}/${encodeURIComponent(userSession)}`;
  if (productId != null) hash += `/${encodeURIComponent(productId)}`;
  return hash;
}

/* ------------------------------------------------------------ API + auth */

// An error from the API (non-2xx JSON answer or network failure).
class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}
// Thrown when an answer arrived after a 401 or came back 401; callers just stop.
class AuthError extends Error {}

// Reads the stored bearer token.
function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

// The one fetch helper: token header, 401 handling, JSON errors. raw: return text instead of JSON.
// `path` is the API's own (`/v1/live`); it is fetched relative to the page, so the console works
// behind a proxy that serves the service under a path prefix.
async function api(path, { method = 'GET', body, raw = false } = {}) {
  const epoch = state.authEpoch;
  const token = getToken();
  const headers = { Accept: raw ? '*/*' : 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path.replace(/^\//, ''), {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`network error: ${e.message || e}`, 0);
  }
  if (epoch !== state.authEpoch) throw new AuthError('stale');
  if (res.status === 401) {
    showLogin(Boolean(token));
    throw new AuthError('unauthorised');
  }
  const text = await res.text();
  if (epoch !== state.authEpoch) throw new AuthError('stale');
  markAuthorised();
  if (!res.ok) {
    let message = '';
    try { message = JSON.parse(text).error; } catch { /* not JSON */ }
    throw new ApiError(message || `${res.status} ${res.statusText}`.trim(), res.status);
  }
  if (raw) return text;
  try { return JSON.parse(text); } catch { throw new ApiError(`invalid JSON from ${path}`, res.status); }
}

// Any answer but 401 proves the token: show the nav and #app.
function markAuthorised() {
  if (state.auth === 'yes') return;
  state.auth = 'yes';
  $('#login').hidden = true;
  $('#nav').hidden = false;
  $('#status').hidden = false;
  $('#app').hidden = false;
}

// 401: clear everything, stop polling and show only the login panel.
function showLogin(wrongToken) {
  state.auth = 'no';
  state.authEpoch += 1;
  state.routeGen += 1;
  stopOverview();
  state.overview = null;
  state.session = null;
  if (wrongToken) {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* ignore */ }
  }
  for (const view of document.querySelectorAll('#app .view')) { view.replaceChildren(); view.hidden = true; }
  $('#app').hidden = true;
  $('#nav').hidden = true;
  fill($('#status'));
  $('#status').hidden = true;
  const msg = $('#login-message');
  msg.textContent = wrongToken ? 'wrong token' : '';
  msg.hidden = !wrongToken;
  $('#token').value = '';
  $('#login').hidden = false;
  $('#token').focus();
}

// Login submit: store the token and reload the current view.
function onLogin(event) {
  event.preventDefault();
  const token = $('#token').value.trim();
  if (!token) return;
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* ignore */ }
  $('#login-message').hidden = true;
  state.auth = 'unknown';
  route();
}

// Shows "updated hh:mm:ss" or an error in #status.
function setStatus(message, isError = false) {
  const el = $('#status');
  el.textContent = message;
  el.title = message;
  el.classList.toggle('error', isError);
}

// Marks a successful refresh in the status line.
function statusOk() {
  setStatus(`updated ${new Date().toLocaleTimeString('en-GB')}`);
}

// Reports an error in the status line; auth errors are already handled by api().
function statusError(e) {
  if (e instanceof AuthError) return;
  setStatus(e && e.message ? e.message : String(e), true);
}

/* ---------------------------------------------------------------- routing */

// Splits the hash into a view name and its parameters.
function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter((p) => p !== '').map((p) => {
    try { return decodeURIComponent(p); } catch { return p; }
  });
  switch (parts[0]) {
    case 'session':
      return { view: 'session', userId: parts[1] ?? null, userSession: parts[2] ?? null, productId: parts[3] ?? null };
    case 'model': return { view: 'model' };
    case 'customers': return { view: 'customers' };
    default: return { view: 'overview' };
  }
}

// Shows the view named in the hash and starts its loading (polling for the overview).
function route() {
  if (state.auth === 'no') return; // only the login form until a token is given
  const r = parseHash();
  const previous = state.view;
  state.routeGen += 1;
  state.view = r.view;
  if (r.view !== 'overview') stopOverview();
  for (const view of document.querySelectorAll('#app .view')) view.hidden = view.id !== `view-${r.view}`;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === r.view);
  const gen = state.routeGen;
  const run = {
    overview: () => startOverview(gen),
    session: () => loadSession(r, gen, previous !== 'session'),
    model: () => loadModel(gen),
    customers: () => loadCustomers(gen),
  }[r.view];
  run().catch(statusError);
}

/* -------------------------------------------------------------- overview */

// Builds the overview cards once (after the first successful /v1/live).
function buildOverview() {
  const view = $('#view-overview');
  fill(view, h('div', { class: 'grid' },
    h('div', { class: 'card span-2' },
      h('h2', {}, 'Events per second'),
      h('div', { class: 'with-side' },
        h('div', { id: 'events-chart', class: 'chart' }),
        h('div', { class: 'bignums' },
          bignum('live-sessions', 'live sessions'),
          bignum('users-in-memory', 'users in memory'),
          bignum('stream-time', 'stream time (as_of)', true)))),
    h('div', { class: 'card' },
      h('h2', {}, 'Abandonment rate'),
      h('div', { id: 'abandonment-chart', class: 'chart' }, h('p', { class: 'empty' }, 'loading…')),
      h('div', { id: 'abandonment-total', class: 'total-rate' }),
      h('p', { class: 'caption' }, 'sessions ended per hour of event time, from the stored outcome tallies')),
    h('div', { class: 'card' },
      h('h2', { id: 'sales-title' }, 'Sales'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'sales' },
        h('thead', {}, h('tr', {}, h('th', {}, 'product'), h('th', { class: 'num' }, 'purchases'),
          h('th', { class: 'num' }, 'revenue'), h('th', {}, 'last sale'))),
        h('tbody')))),
    h('div', { class: 'card' },
      h('h2', {}, 'Most likely to sell now'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'likely' },
        h('thead', {}, h('tr', {}, h('th', {}, 'product'), h('th', { class: 'num' }, 'propensity'),
          h('th', {}, 'band'), h('th', { class: 'num' }, 'carts'))),
        h('tbody'))),
      h('p', { class: 'caption' }, 'recently carted products, scored by the model in service for a shopper starting a session')),
    h('div', { class: 'card' },
      h('h2', {}, 'Recent shoppers'),
      h('ul', { id: 'recent-sessions', class: 'plain' }))));
}

// One big number block with an id on its value.
function bignum(id, label, small = false) {
  return h('div', { class: 'bignum' }, h('div', { id, class: small ? 'value small' : 'value' }, '—'), h('div', { class: 'label' }, label));
}

// Starts polling /v1/live every LIVE_MS while the overview is shown.
async function startOverview(gen) {
  stopOverview();
  if (!state.overview) state.overview = { built: false, points: [], prev: null, timer: null, inFlight: false, lastOutcomes: 0, outcomesInFlight: false };
  const ov = state.overview;
  ov.prev = null; // the gap while away would flatten the rates
  ov.lastOutcomes = 0;
  ov.timer = setInterval(() => pollLive(gen), LIVE_MS);
  await pollLive(gen);
}

// Stops the overview polling.
function stopOverview() {
  if (state.overview && state.overview.timer) {
    clearInterval(state.overview.timer);
    state.overview.timer = null;
  }
}

// One /v1/live poll: update rates, big numbers, tables, and every 5 s the outcomes.
async function pollLive(gen) {
  const ov = state.overview;
  if (!ov || ov.inFlight || gen !== state.routeGen) return;
  ov.inFlight = true;
  try {
    const live = await api('/v1/live');
    if (gen !== state.routeGen || state.overview !== ov) return;
    if (!ov.built) { buildOverview(); ov.built = true; }
    addRatePoint(ov, live.events || {});
    renderEventsChart(ov.points);
    $('#live-sessions').textContent = fmtInt(live.live_sessions);
    $('#users-in-memory').textContent = fmtInt(live.users_in_memory);
    $('#stream-time').textContent = txt(live.as_of);
    renderSales(live);
    renderLikely(live.likely_to_sell);
    renderRecent(live.recent_sessions);
    statusOk();
    ov.threshold = live.abandonment_threshold;
    if (Date.now() - ov.lastOutcomes >= OUTCOMES_MS && !ov.outcomesInFlight) {
      ov.lastOutcomes = Date.now();
      loadOutcomes(ov, live.as_of, gen);
    }
  } catch (e) {
    statusError(e);
  } finally {
    ov.inFlight = false;
  }
}

// Turns two successive event totals into per-type rates (events per wall second).
function addRatePoint(ov, events) {
  const now = performance.now();
  const totals = {};
  for (const t of EVENT_TYPES) totals[t] = isNum(events[t]) ? events[t] : 0;
  if (ov.prev) {
    const dt = (now - ov.prev.t) / 1000;
    const point = { at: Date.now() };
    let reset = false;
    for (const t of EVENT_TYPES) {
      const delta = totals[t] - ov.prev.totals[t];
      if (delta < 0) reset = true;
      point[t] = dt > 0 ? Math.max(0, delta) / dt : 0;
    }
    if (reset) ov.points = []; // the service restarted: counters went back
    else {
      ov.points.push(point);
      if (ov.points.length > MAX_POINTS) ov.points.splice(0, ov.points.length - MAX_POINTS);
    }
  }
  ov.prev = { t: now, totals };
}

// Draws the y axis (gridlines and labels) of a chart area.
function drawYAxis(g, { x, y, w, hgt, max, ticks, format }) {
  for (let i = 0; i <= ticks; i += 1) {
    const v = (max * i) / ticks;
    const yy = y + hgt - (hgt * i) / ticks;
    g.appendChild(s('line', { x1: x, x2: x + w, y1: yy, y2: yy, stroke: '#e5e8ec', 'stroke-width': 1 }));
    g.appendChild(s('text', { x: x - 6, y: yy + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#6a737d' }, format(v)));
  }
}

// Turns a list of [x, y] pairs into an SVG path, breaking at null y values.
function pathData(points) {
  let d = '';
  let pen = false;
  for (const [x, y] of points) {
    if (y == null) { pen = false; continue; }
    d += `${pen ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)} `;
    pen = true;
  }
  return d.trim();
}

// Line chart of per-type event rates over the last MAX_POINTS polls, with a legend.
function renderEventsChart(points) {
  const el = $('#events-chart');
  if (!el) return;
  const W = 640; const H = 270;
  const m = { l: 48, r: 10, t: 28, b: 22 };
  const w = W - m.l - m.r; const hgt = H - m.t - m.b;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'events per second' });
  const max = niceMax(Math.max(0, ...points.flatMap((p) => EVENT_TYPES.map((t) => p[t]))));
  drawYAxis(svg, { x: m.l, y: m.t, w, hgt, max, ticks: 4, format: (v) => (max < 4 ? v.toFixed(1) : fmtInt(Math.round(v))) });
  svg.appendChild(s('text', { x: m.l, y: H - 6, 'font-size': 11, fill: '#6a737d' }, `last ${Math.round((MAX_POINTS * LIVE_MS) / 1000)} s`));
  svg.appendChild(s('text', { x: m.l + w, y: H - 6, 'font-size': 11, fill: '#6a737d', 'text-anchor': 'end' }, 'now'));
  const last = points[points.length - 1];
  // Legend with the current rate.
  let lx = m.l;
  for (const t of EVENT_TYPES) {
    svg.appendChild(s('rect', { x: lx, y: 8, width: 12, height: 4, fill: EVENT_COLORS[t] }));
    const label = `${t} ${last ? last[t].toFixed(1) : '–'}/s`;
    svg.appendChild(s('text', { x: lx + 16, y: 14, 'font-size': 11, fill: '#1f2328' }, label));
    lx += 30 + label.length * 6;
  }
  if (points.length < 2) {
    svg.appendChild(s('text', { x: m.l + w / 2, y: m.t + hgt / 2, 'text-anchor': 'middle', 'font-size': 13, fill: '#6a737d' }, 'collecting…'));
  } else {
    const step = w / (MAX_POINTS - 1);
    const offset = MAX_POINTS - points.length; // newest point at the right edge
    for (const t of EVENT_TYPES) {
      const xy = points.map((p, i) => [m.l + (offset + i) * step, m.t + hgt - (hgt * p[t]) / max]);
      svg.appendChild(s('path', { d: pathData(xy), fill: 'none', stroke: EVENT_COLORS[t], 'stroke-width': 2, 'data-type': t }));
    }
  }
  fill(el, svg);
}

// Fetches the outcomes of the 47 hours up to the stream time and draws them.
async function loadOutcomes(ov, asOf, gen) {
  const to = parseUtc(asOf);
  if (!to) return;
  const from = new Date(to.getTime() - 47 * 3600 * 1000);
  ov.outcomesInFlight = true;
  try {
    const q = `from=${encodeURIComponent(formatUtc(from))}&to=${encodeURIComponent(formatUtc(to))}`;
    const out = await api(`/v1/outcomes?${q}`);
    if (gen !== state.routeGen || state.overview !== ov) return;
    renderAbandonment(out, ov.threshold);
  } catch (e) {
    statusError(e);
  } finally {
    ov.outcomesInFlight = false;
  }
}

// Hourly abandonment rate (0..1) against the dashed alert threshold, plus the period's total.
function renderAbandonment(out, threshold) {
  const el = $('#abandonment-chart');
  if (!el) return;
  const hours = Array.isArray(out && out.hours) ? out.hours : [];
  const W = 420; const H = 230;
  const m = { l: 40, r: 10, t: 12, b: 24 };
  const w = W - m.l - m.r; const hgt = H - m.t - m.b;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'abandonment rate per hour' });
  drawYAxis(svg, { x: m.l, y: m.t, w, hgt, max: 1, ticks: 4, format: (v) => `${Math.round(v * 100)}%` });
  const n = hours.length;
  const xAt = (i) => m.l + (n > 1 ? (w * i) / (n - 1) : w / 2);
  const yAt = (v) => m.t + hgt - hgt * Math.min(1, Math.max(0, v));
  // X labels: a few hours of day.
  const every = Math.max(1, Math.ceil(n / 6));
  hours.forEach((hr, i) => {
    if (i % every !== 0) return;
    const d = parseUtc(hr.hour);
    const label = d ? `${String(d.getUTCHours()).padStart(2, '0')}:00` : '';
    svg.appendChild(s('text', { x: xAt(i), y: H - 6, 'text-anchor': 'middle', 'font-size': 10, fill: '#6a737d' }, label));
  });
  if (isNum(threshold)) {
    const ty = yAt(threshold);
    svg.appendChild(s('line', { x1: m.l, x2: m.l + w, y1: ty, y2: ty, stroke: '#c62828', 'stroke-width': 1.5, 'stroke-dasharray': '6 4', class: 'threshold' }));
    svg.appendChild(s('text', { x: m.l + w - 2, y: ty - 5, 'text-anchor': 'end', 'font-size': 11, fill: '#c62828' }, `alert threshold ${fmtPct(threshold, 0)}`));
  }
  const xy = hours.map((hr, i) => [xAt(i), isNum(hr.abandonment_rate) ? yAt(hr.abandonment_rate) : null]);
  svg.appendChild(s('path', { d: pathData(xy), fill: 'none', stroke: '#2f6fdb', 'stroke-width': 2 }));
  for (const [x, y] of xy) if (y != null) svg.appendChild(s('circle', { cx: x, cy: y, r: 2.5, fill: '#2f6fdb' }));
  if (!xy.some(([, y]) => y != null)) {
    svg.appendChild(s('text', { x: m.l + w / 2, y: m.t + hgt / 2, 'text-anchor': 'middle', 'font-size': 13, fill: '#6a737d' }, 'no ended sessions in this period'));
  }
  fill(el, svg);
  const total = (out && out.total) || {};
  fill($('#abandonment-total'),
    'period total: ', h('strong', {}, fmtPct(total.abandonment_rate)),
    h('span', { class: 'muted' }, ` (${fmtInt(total.purchased)} purchased, ${fmtInt(total.abandoned)} abandoned, ${fmtInt(total.browsed)} browsed)`));
}

// The sales table: one row per product sold in the window, with a revenue bar.
function renderSales(live) {
  const win = isNum(live.sales_window_seconds) ? live.sales_window_seconds / 60 : null;
  $('#sales-title').textContent = win == null ? 'Sales' : `Sales, last ${+win.toFixed(1)} minutes`;
  const rows = Array.isArray(live.sales) ? live.sales : [];
  const max = Math.max(0, ...rows.map((r) => (isNum(r.revenue) ? r.revenue : 0)));
  const body = $('#sales tbody');
  if (!rows.length) { fill(body, h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'no sales yet'))); return; }
  fill(body, rows.map((r) => h('tr', { 'data-product-id': r.product_id },
    h('td', { class: 'product' }, txt(r.product_id)),
    h('td', { class: 'purchases' }, fmtInt(r.purchases)),
    h('td', { class: 'num revenue bar-cell' },
      h('div', { class: 'bar', style: `width:${max > 0 && isNum(r.revenue) ? (100 * r.revenue) / max : 0}%` }),
      h('span', {}, fmtMoney(r.revenue))),
    h('td', { class: 'muted' }, txt(r.last_sale_at)))));
}

// The "most likely to sell" table.
function renderLikely(items) {
  const rows = Array.isArray(items) ? items : [];
  const body = $('#likely tbody');
  if (!rows.length) { fill(body, h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'no recently carted products'))); return; }
  fill(body, rows.map((r) => h('tr', { 'data-product-id': r.product_id },
    h('td', { class: 'product' }, txt(r.product_id)),
    h('td', { class: 'propensity', 'data-propensity': r.propensity == null ? null : String(r.propensity) }, fmtProp(r.propensity)),
    h('td', {}, bandPill(r.band)),
    h('td', { class: 'num' }, fmtInt(r.carts)))));
}

// A coloured pill for a band ("low", "medium", "high").
function bandPill(band) {
  return band ? h('span', { class: `band band-${band}` }, band) : '—';
}

// The recent shoppers list: links to the session explorer.
function renderRecent(items) {
  const rows = Array.isArray(items) ? items : [];
  const list = $('#recent-sessions');
  if (!rows.length) { fill(list, h('li', { class: 'empty' }, 'no sessions yet')); return; }
  fill(list, rows.map((r) => h('li', {},
    h('a', { href: sessionHash(r.user_id, r.user_session) }, `user ${txt(r.user_id)}`),
    r.event_type ? h('span', { class: 'tag' }, r.event_type) : null,
    h('span', { class: 'muted' }, ` ${txt(r.last_event_at)}`))));
}

/* --------------------------------------------------------- session view */

// Builds the session view's form and detail container.
function buildSessionView(r) {
  const form = h('form', { id: 'session-form', class: 'inline' },
    h('label', { for: 'user-id' }, 'user'),
    h('input', { id: 'user-id', inputmode: 'numeric', placeholder: 'user id', required: true }),
    h('label', { for: 'user-session' }, 'session'),
    h('input', { id: 'user-session', placeholder: 'user_session', required: true }),
    h('button', { type: 'submit' }, 'Open'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const u = $('#user-id').value.trim(); const sess = $('#user-session').value.trim();
    if (u && sess) location.hash = sessionHash(u, sess);
  });
  fill($('#view-session'), form, h('div', { id: 'session-detail' }));
  $('#user-id').value = r.userId || '';
  $('#user-session').value = r.userSession || '';
}

// Loads the session named in the hash (or just shows the form), then scores its products.
async function loadSession(r, gen, entering) {
  const view = $('#view-session');
  if (!r.userId || !r.userSession) {
    if (state.auth !== 'yes') await api('/v1/model').catch((e) => { if (e instanceof AuthError) throw e; });
    if (gen !== state.routeGen) return;
    buildSessionView(r);
    fill($('#session-detail'), h('p', { class: 'muted' }, 'Enter a user id and session, or pick a recent shopper on the Overview.'));
    return;
  }
  const key = `${r.userId}/${r.userSession}`;
  const ss = state.session;
  if (ss && ss.key === key && ss.data && !entering && view.firstChild) {
    ss.selected = r.productId;
    renderSessionDetail(ss);
    return;
  }
  let data;
  try {
    data = await api(`/v1/sessions/${encodeURIComponent(r.userId)}/${encodeURIComponent(r.userSession)}`);
  } catch (e) {
    if (e instanceof AuthError || gen !== state.routeGen) throw e;
    buildSessionView(r);
    fill($('#session-detail'), h('p', { class: 'error', id: 'session-error' }, e.message));
    statusError(e);
    return;
  }
  if (gen !== state.routeGen) return;
  const next = { key, data, scores: null, scoreError: null, selected: r.productId };
  const products = Array.isArray(data.products) ? data.products : [];
  const ids = products.map((p) => p.product_id).filter((id) => id != null).slice(0, 100);
  if (ids.length) {
    try {
      next.scores = await api('/v1/score', {
        method: 'POST',
        body: { user_id: data.user_id ?? Number(r.userId), user_session: data.user_session ?? r.userSession, product_ids: ids, explain: true },
      });
    } catch (e) {
      if (e instanceof AuthError) throw e;
      next.scoreError = e.message;
      statusError(e);
    }
  }
  if (gen !== state.routeGen) return;
  state.session = next;
  buildSessionView(r);
  renderSessionDetail(next);
  if (!next.scoreError) statusOk();
}

// Renders the header, timeline, cart, products, why panel and customer value of a session.
function renderSessionDetail(ss) {
  const d = ss.data || {};
  const scores = Array.isArray(ss.scores && ss.scores.scores) ? ss.scores.scores : [];
  const byId = new Map(scores.map((sc) => [String(sc.product_id), sc]));
  const products = Array.isArray(d.products) ? d.products : [];
  // Scored products first (best first), then the rest in session order.
  const order = [
    ...scores.map((sc) => products.find((p) => String(p.product_id) === String(sc.product_id)) || { product_id: sc.product_id }),
    ...products.filter((p) => !byId.has(String(p.product_id))),
  ];
  const selected = ss.selected != null ? String(ss.selected) : order.length ? String(order[0].product_id) : null;
  const cart = Array.isArray(d.cart) ? d.cart : [];
  const inCart = new Set(cart.map((c) => String(c.product_id)));
  for (const p of products) if (p.in_cart > 0) inCart.add(String(p.product_id));
  const go = (pid) => { location.hash = sessionHash(d.user_id, d.user_session, pid); };

  const header = h('div', { class: 'card span-3' },
    h('h2', {}, 'Session'),
    h('div', { class: 'header-stats' },
      stat('user', txt(d.user_id)), stat('session', txt(d.user_session)),
      stat('state', h('span', { class: `pill ${d.live ? 'live' : 'ended'}` }, d.live ? 'live' : 'ended')),
      stat('outcome', d.outcome ? d.outcome : d.outcome_so_far ? `${d.outcome_so_far} (so far)` : '—'),
      stat('started', txt(d.started_at)), stat('last event', txt(d.last_event_at)),
      stat('cart value', fmtMoney(d.cart_value)),
      stat('events', `${fmtInt(d.counts?.views)} views · ${fmtInt(d.counts?.carts)} carts · ${fmtInt(d.counts?.removes)} removes · ${fmtInt(d.counts?.purchases)} purchases`)));

  const timeline = h('div', { class: 'card span-2' }, h('h2', {}, 'View sequence'),
    h('div', { id: 'timeline', class: 'chart' }, timelineSvg(Array.isArray(d.views) ? d.views : [], inCart, go)));

  const cartCard = h('div', { class: 'card' }, h('h2', {}, 'Cart'),
    cart.length ? h('table', { id: 'cart' },
      h('thead', {}, h('tr', {}, h('th', {}, 'product'), h('th', { class: 'num' }, 'qty'), h('th', { class: 'num' }, 'price'))),
      h('tbody', {}, cart.map((c) => h('tr', { 'data-product-id': c.product_id },
        h('td', {}, txt(c.product_id)), h('td', { class: 'num' }, fmtInt(c.quantity)), h('td', { class: 'num' }, fmtMoney(c.price))))),
      h('tfoot', {}, h('tr', {}, h('th', {}, `${fmtInt(d.cart_items)} items`), h('th'), h('th', { class: 'num' }, fmtMoney(d.cart_value)))))
      : h('p', { class: 'empty' }, 'cart is empty'));

  const productRows = order.map((p) => {
    const sc = byId.get(String(p.product_id));
    return h('tr', {
      'data-product-id': p.product_id,
      class: `clickable${String(p.product_id) === selected ? ' selected' : ''}`,
      onclick: () => go(p.product_id),
    },
    h('td', {}, txt(p.product_id)), h('td', { class: 'num' }, fmtInt(p.views)), h('td', { class: 'num' }, fmtInt(p.carts)),
    h('td', { class: 'num' }, fmtInt(p.in_cart)),
    h('td', { class: 'propensity', 'data-propensity': sc && sc.propensity != null ? String(sc.propensity) : null }, sc ? fmtProp(sc.propensity) : '—'),
    h('td', {}, sc ? bandPill(sc.band) : '—'), h('td', {}, sc ? txt(sc.action) : '—'));
  });
  const productsCard = h('div', { class: 'card' }, h('h2', {}, 'Products touched'),
    ss.scoreError ? h('p', { class: 'error' }, `scoring failed: ${ss.scoreError}`) : null,
    ss.scores && ss.scores.model_version ? h('p', { class: 'caption' }, `model ${ss.scores.model_version}; click a row to see why`) : null,
    h('div', { class: 'table-wrap' }, h('table', { id: 'products' },
      h('thead', {}, h('tr', {}, h('th', {}, 'product'), h('th', { class: 'num' }, 'views'), h('th', { class: 'num' }, 'carts'),
        h('th', { class: 'num' }, 'in cart'), h('th', { class: 'num' }, 'propensity'), h('th', {}, 'band'), h('th', {}, 'action'))),
      h('tbody', {}, productRows.length ? productRows : h('tr', {}, h('td', { colspan: 7, class: 'empty' }, 'no products touched'))))));

  const sel = selected != null ? byId.get(selected) : null;
  const why = h('div', { class: 'card' }, h('h2', {}, selected != null ? `Why: product ${selected}` : 'Why'),
    h('div', { id: 'decision-path', class: 'chart' }, decisionPath(sel)));

  const cv = ss.scores && ss.scores.customer_value;
  const cvCard = cv ? h('div', { class: 'card', id: 'customer-value' }, h('h2', {}, 'Customer value'),
    h('dl', { class: 'kv' },
      kv('p_alive', fmtFixed(cv.p_alive, 3)), kv('expected purchases 90d', fmtFixed(cv.expected_purchases_90d, 2)),
      kv('predicted value 90d', fmtMoney(cv.predicted_value_90d)), kv('segment', txt(cv.segment)))) : null;

  const feats = d.features && typeof d.features === 'object' ? Object.entries(d.features) : [];
  const featCard = feats.length ? h('div', { class: 'card' }, h('details', {}, h('summary', {}, `Session features (${feats.length})`),
    h('table', {}, h('tbody', {}, feats.map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', { class: 'num' }, fmtNum(v)))))))) : null;

  fill($('#session-detail'), h('div', { class: 'grid' }, header, timeline, cartCard,
    h('div', { class: 'span-3 grid two' }, productsCard, why), cvCard, featCard));
}

// A label/value block for the session header.
function stat(label, value) {
  return h('div', {}, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
}

// A <dt>/<dd> pair.
function kv(label, value) {
  return [h('dt', {}, label), h('dd', {}, value)];
}

// The "View sequence" strip: one marker per viewed product, in order; cart products coloured.
function timelineSvg(views, inCart, onPick) {
  if (!views.length) return h('p', { class: 'empty' }, 'no product views in this session');
  const step = 56; const W = Math.max(480, 40 + views.length * step); const H = 96; const y = 52;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'fixed', role: 'img', 'aria-label': 'view sequence' });
  svg.appendChild(s('circle', { cx: 10, cy: 12, r: 6, fill: '#4e79a7' }));
  svg.appendChild(s('text', { x: 22, y: 16, 'font-size': 12, fill: '#1f2328' }, 'viewed'));
  svg.appendChild(s('circle', { cx: 90, cy: 12, r: 6, fill: '#f28e2b' }));
  svg.appendChild(s('text', { x: 102, y: 16, 'font-size': 12, fill: '#1f2328' }, 'in cart now'));
  svg.appendChild(s('text', { x: W - 4, y: 16, 'font-size': 11, fill: '#6a737d', 'text-anchor': 'end' }, 'oldest → newest'));
  const x0 = 28;
  svg.appendChild(s('line', { x1: x0, x2: x0 + (views.length - 1) * step, y1: y, y2: y, stroke: '#c8ced6', 'stroke-width': 2 }));
  views.forEach((pid, i) => {
    const cx = x0 + i * step;
    const carted = inCart.has(String(pid));
    const g = s('g', { class: `marker${carted ? ' in-cart' : ''}`, 'data-product-id': pid, style: 'cursor:pointer' });
    g.appendChild(s('title', {}, `#${i + 1}: product ${pid}${carted ? ' (in cart)' : ''}`));
    g.appendChild(s('circle', { cx, cy: y, r: 10, fill: carted ? '#f28e2b' : '#4e79a7', stroke: '#fff', 'stroke-width': 2 }));
    g.appendChild(s('text', { x: cx, y: y + 4, 'text-anchor': 'middle', 'font-size': 10, fill: '#fff' }, i + 1));
    g.appendChild(s('text', { x: cx, y: y + 28, 'text-anchor': 'middle', 'font-size': 10, fill: '#1f2328' }, shortId(pid)));
    g.addEventListener('click', () => onPick(pid));
    svg.appendChild(g);
  });
  return svg;
}

// The "Why" panel: the decision path as a vertical SVG chain of splits, the leaf, and a table.
function decisionPath(score) {
  if (!score) return h('p', { class: 'empty' }, 'no score for this product');
  const ex = score.explanation;
  if (!ex || typeof ex !== 'object') return h('p', { class: 'empty' }, 'no explanation for this product');
  const steps = Array.isArray(ex.steps) ? ex.steps : [];
  const W = 520; const cx = 260; const bw = 320; const bh = 44; const gap = 44;
  const H = 16 + steps.length * (bh + gap) + bh + 54;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'fixed', role: 'img', 'aria-label': 'decision path' });
  svg.appendChild(s('defs', {})).appendChild(arrowMarker());
  steps.forEach((st, i) => {
    const y = 8 + i * (bh + gap);
    const left = st.branch === 'left';
    svg.appendChild(s('rect', { x: cx - bw / 2, y, width: bw, height: bh, rx: 6, fill: '#eef3fb', stroke: '#4e79a7' }));
    svg.appendChild(s('text', { x: cx, y: y + 18, 'text-anchor': 'middle', 'font-size': 12, 'font-weight': 600, fill: '#1f2328' },
      `${txt(st.feature)} <= ${fmtNum(st.threshold)}?`));
    svg.appendChild(s('text', { x: cx, y: y + 35, 'text-anchor': 'middle', 'font-size': 11, fill: '#6a737d' },
      `value ${fmtNum(st.value)} · node ${txt(st.node)}`));
    const y1 = y + bh; const y2 = y1 + gap;
    // Taken edge: straight down to the next box, labelled yes/no.
    svg.appendChild(s('line', { x1: cx, y1, x2: cx, y2: y2 - 2, stroke: '#1f2328', 'stroke-width': 2, 'marker-end': 'url(#arrow)' }));
    svg.appendChild(s('text', { x: cx + (left ? -8 : 8), y: y1 + gap / 2 + 4, 'text-anchor': left ? 'end' : 'start', 'font-size': 12, 'font-weight': 600, fill: left ? '#1e6b34' : '#a12622' }, left ? 'yes' : 'no'));
    // Branch not taken: a short grey stub to the other side.
    const dir = left ? 1 : -1;
    const sx = cx + dir * (bw / 2 - 30);
    svg.appendChild(s('line', { x1: sx, y1, x2: sx + dir * 50, y2: y1 + 26, stroke: '#b5bcc5', 'stroke-width': 1.5, 'stroke-dasharray': '4 3' }));
    svg.appendChild(s('text', { x: sx + dir * 56, y: y1 + 30, 'text-anchor': left ? 'start' : 'end', 'font-size': 11, fill: '#9aa2ac' }, left ? 'no' : 'yes'));
  });
  const leaf = ex.leaf || {};
  const ly = 8 + steps.length * (bh + gap);
  svg.appendChild(s('rect', { x: cx - bw / 2, y: ly, width: bw, height: bh, rx: 6, fill: '#e6f4ea', stroke: '#59a14f' }));
  svg.appendChild(s('text', { x: cx, y: ly + 27, 'text-anchor': 'middle', 'font-size': 12, 'font-weight': 600, fill: '#1f2328' },
    `leaf #${txt(leaf.node)}: ${fmtInt(leaf.positives)} of ${fmtInt(leaf.total)} bought, p=${fmtFixed(leaf.probability, 2)}`));
  const scoreVal = isNum(ex.score) ? ex.score : score.propensity;
  svg.appendChild(s('text', { x: cx, y: ly + bh + 26, 'text-anchor': 'middle', 'font-size': 15, 'font-weight': 700, fill: '#2f6fdb' },
    `propensity ${fmtProp(scoreVal)}`));
  svg.appendChild(s('text', { x: cx, y: ly + bh + 44, 'text-anchor': 'middle', 'font-size': 11, fill: '#6a737d' },
    `base rate ${fmtProp(ex.base_rate)} · band ${txt(score.band)} · action ${txt(score.action)}`));
  const table = h('table', { class: 'steps' },
    h('thead', {}, h('tr', {}, h('th', {}, 'feature'), h('th', { class: 'num' }, 'value'), h('th', { class: 'num' }, 'threshold'), h('th', {}, 'branch'))),
    h('tbody', {}, steps.length ? steps.map((st) => h('tr', {},
      h('td', {}, txt(st.feature)), h('td', { class: 'num' }, fmtNum(st.value)), h('td', { class: 'num' }, fmtNum(st.threshold)),
      h('td', {}, st.branch === 'left' ? 'left (yes)' : st.branch === 'right' ? 'right (no)' : txt(st.branch))))
      : h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'the tree is a single leaf'))));
  return [svg, table];
}

// An arrowhead marker for the decision path edges.
function arrowMarker() {
  const m = s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  m.appendChild(s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#1f2328' }));
  return m;
}

/* ----------------------------------------------------------- model view */

// Loads the model card, its report SVGs and the importance chart.
async function loadModel(gen) {
  let model;
  try {
    model = await api('/v1/model');
  } catch (e) {
    if (e instanceof AuthError || gen !== state.routeGen) throw e;
    fill($('#view-model'), h('div', { class: 'card' }, h('h2', {}, 'Model'), h('p', { class: 'error' }, e.message)));
    throw e;
  }
  if (gen !== state.routeGen) return;
  const span = model.training_span;
  const metrics = model.metrics && typeof model.metrics === 'object'
    ? Object.entries(model.metrics).filter(([, v]) => isNum(v)) : [];
  const features = Array.isArray(model.top_features) ? model.top_features : [];
  const charts = [['roc.svg', 'ROC curve'], ['pr.svg', 'Precision–recall'], ['calibration.svg', 'Calibration'], ['feature_importance.svg', 'Feature importance (report)']];
  fill($('#view-model'), h('div', { class: 'grid' },
    h('div', { class: 'card', id: 'model-card' }, h('h2', {}, 'Model in service'),
      h('dl', { class: 'kv' },
        kv('version', txt(model.version)), kv('trained at', txt(model.trained_at)),
        kv('training span', span ? `${txt(span.from)} → ${txt(span.to)}` : '—'),
        kv('training rows', fmtInt(model.training_rows)), kv('base rate', fmtProp(model.base_rate)),
        kv('training distributions', model.training_distributions ? 'yes' : 'no'))),
    h('div', { class: 'card' }, h('h2', {}, 'Metrics'),
      metrics.length ? h('table', { id: 'metrics' },
        h('tbody', {}, metrics.map(([k, v]) => h('tr', { 'data-metric': k }, h('td', {}, k), h('td', { class: 'num' }, Number.isInteger(v) ? fmtInt(v) : fmtFixed(v, 4))))))
        : h('p', { class: 'empty' }, 'no metrics')),
    h('div', { class: 'card' }, h('h2', {}, 'Top features'),
      h('div', { id: 'importance', class: 'chart' },
        features.length ? barChart(features.map((f) => ({ label: txt(f.feature), value: isNum(f.importance) ? f.importance : 0, text: fmtFixed(f.importance, 3) })), '#4e79a7')
          : h('p', { class: 'empty' }, 'no feature importances'))),
    h('div', { class: 'card span-3' }, h('h2', {}, 'Training report'),
      h('div', { id: 'report-charts' }, charts.map(([file, title]) => h('div', { class: 'report-chart', 'data-chart': file },
        h('h3', {}, title), h('div', { class: 'body' }, h('p', { class: 'empty' }, 'loading…'))))))));
  statusOk();
  await Promise.all(charts.map(([file]) => loadReportChart(file, gen)));
}

// Fetches one report SVG with the token and inlines it, or shows the API's error in its place.
async function loadReportChart(file, gen) {
  const cell = $(`#report-charts [data-chart="${file}"] .body`);
  try {
    const text = await api(`/v1/model/report/${file}`, { raw: true });
    if (gen !== state.routeGen || !cell.isConnected) return;
    cell.innerHTML = text; // our own SVG, served by the service
    const svg = cell.querySelector('svg');
    if (svg && !svg.getAttribute('viewBox')) {
      const w = parseFloat(svg.getAttribute('width')); const hh = parseFloat(svg.getAttribute('height'));
      if (w > 0 && hh > 0) svg.setAttribute('viewBox', `0 0 ${w} ${hh}`);
    }
    if (svg) { svg.removeAttribute('width'); svg.removeAttribute('height'); }
  } catch (e) {
    if (e instanceof AuthError) return;
    if (gen !== state.routeGen || !cell.isConnected) return;
    fill(cell, h('p', { class: 'error' }, e.message || 'no report: train with --report-dir'));
  }
}

// Horizontal bar chart: one labelled bar per item ({label, value, text}).
function barChart(items, color) {
  const rowH = 24; const labelW = 250; const barW = 170; const W = labelW + barW + 60;
  const H = items.length * rowH + 8;
  const max = Math.max(0, ...items.map((i) => i.value)) || 1;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'fixed', role: 'img' });
  items.forEach((it, i) => {
    const y = 4 + i * rowH;
    const label = it.label.length > 36 ? `${it.label.slice(0, 35)}…` : it.label;
    const t = s('text', { x: labelW - 8, y: y + 15, 'text-anchor': 'end', 'font-size': 12, fill: '#1f2328' }, label);
    t.appendChild(s('title', {}, it.label));
    svg.appendChild(t);
    const w = Math.max(1, (barW * it.value) / max);
    svg.appendChild(s('rect', { x: labelW, y: y + 4, width: w, height: rowH - 8, rx: 2, fill: color, 'data-label': it.label }));
    svg.appendChild(s('text', { x: labelW + w + 6, y: y + 15, 'font-size': 11, fill: '#6a737d' }, it.text));
  });
  return svg;
}

/* ------------------------------------------------------- customers view */

// Loads the customer segments (or their 404 message) and the value lookup form.
async function loadCustomers(gen) {
  let seg = null; let segError = null;
  try {
    seg = await api('/v1/segments');
  } catch (e) {
    if (e instanceof AuthError || gen !== state.routeGen) throw e;
    segError = e.message;
    statusError(e);
  }
  if (gen !== state.routeGen) return;
  const form = h('form', { id: 'value-form', class: 'inline' },
    h('label', { for: 'value-user-id' }, 'user id'),
    h('input', { id: 'value-user-id', inputmode: 'numeric', placeholder: 'user id', required: true }),
    h('button', { type: 'submit' }, 'Look up'));
  form.addEventListener('submit', (e) => { e.preventDefault(); lookupUser().catch(statusError); });
  fill($('#view-customers'), h('div', { class: 'grid two' },
    h('div', { class: 'card span-3' }, h('h2', {}, 'Customer segments'), segmentsContent(seg, segError)),
    h('div', { class: 'card span-3' }, h('h2', {}, 'Customer value'), form, h('div', { id: 'value-result' }))));
  if (seg) statusOk();
}

// The segments bar chart and table, or the error message.
function segmentsContent(seg, error) {
  if (!seg) return h('p', { class: 'error', id: 'segments-error' }, error || 'no customer segments');
  const segments = Array.isArray(seg.segments) ? seg.segments : [];
  const feats = Array.isArray(seg.features) ? seg.features : [];
  const total = isNum(seg.customers) && seg.customers > 0 ? seg.customers : segments.reduce((a, x) => a + (isNum(x.customers) ? x.customers : 0), 0);
  const share = (n) => (total > 0 && isNum(n) ? fmtPct(n / total) : '—');
  return [
    h('p', { class: 'caption' }, `version ${txt(seg.version)} · fitted ${txt(seg.fitted_at)} · value model ${txt(seg.value_model_version)} · ${fmtInt(seg.customers)} customers`),
    h('div', { class: 'grid two' },
      h('div', { id: 'segments-chart', class: 'chart' },
        segments.length ? barChart(segments.map((x) => ({ label: txt(x.name), value: isNum(x.customers) ? x.customers : 0, text: `${fmtInt(x.customers)} (${share(x.customers)})` })), '#59a14f')
          : h('p', { class: 'empty' }, 'no segments')),
      h('div', { class: 'table-wrap' }, h('table', { id: 'segments-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'segment'), h('th', { class: 'num' }, 'customers'), h('th', { class: 'num' }, 'share'),
          h('th', { class: 'num' }, 'mean p_alive'), feats.map((f) => h('th', { class: 'num' }, `mean ${f}`)))),
        h('tbody', {}, segments.map((x) => h('tr', { 'data-segment': x.name },
          h('td', {}, txt(x.name)), h('td', { class: 'num' }, fmtInt(x.customers)), h('td', { class: 'num' }, share(x.customers)),
          h('td', { class: 'num' }, fmtFixed(x.mean_p_alive, 3)),
          feats.map((f, i) => h('td', { class: 'num' }, fmtFixed(Array.isArray(x.means) ? x.means[i] : null, 2))))))))),
  ];
}

// GET /v1/users/{id} for the value form and renders it into #value-result.
async function lookupUser() {
  const id = $('#value-user-id').value.trim();
  const out = $('#value-result');
  if (!id) return;
  fill(out, h('p', { class: 'muted' }, 'loading…'));
  let u;
  try {
    u = await api(`/v1/users/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e instanceof AuthError) throw e;
    if (out.isConnected) fill(out, h('p', { class: 'error' }, e.message));
    throw e;
  }
  if (!out.isConnected) return;
  const c = u.counts && typeof u.counts === 'object' ? u.counts : {};
  const v = u.value;
  fill(out, h('div', { class: 'grid two' },
    h('div', {}, h('h3', {}, `User ${txt(u.user_id)}`), h('dl', { class: 'kv' },
      kv('sessions', fmtInt(u.sessions)), kv('purchase sessions', fmtInt(u.purchase_sessions)),
      kv('lifetime value', fmtMoney(u.lifetime_value)), kv('products', fmtInt(u.products)),
      kv('events', Object.entries(c).map(([k, n]) => `${k} ${fmtInt(n)}`).join(' · ') || '—'),
      kv('first event', txt(u.first_event_at)), kv('last event', txt(u.last_event_at)), kv('last purchase', txt(u.last_purchase_at)))),
    h('div', { id: 'value-prediction' }, h('h3', {}, 'Predicted value'), v && typeof v === 'object' ? h('dl', { class: 'kv' },
      kv('p_alive', fmtFixed(v.p_alive, 3)), kv('expected purchases 90d', fmtFixed(v.expected_purchases_90d, 2)),
      kv('expected spend per purchase', fmtMoney(v.expected_spend_per_purchase)), kv('predicted value 90d', fmtMoney(v.predicted_value_90d)),
      kv('frequency', fmtInt(v.frequency)), kv('recency (weeks)', fmtFixed(v.recency_weeks, 1)), kv('age (weeks)', fmtFixed(v.age_weeks, 1)),
      kv('segment', txt(v.segment)), kv('model version', txt(v.model_version)))
      : h('p', { class: 'empty' }, 'no prediction: no purchase yet or no value model in service'))));
  statusOk();
}

/* ------------------------------------------------------------------ start */

// Wires the login form and hash routing, then shows the current view.
function start() {
  $('#login').addEventListener('submit', onLogin);
  window.addEventListener('hashchange', route);
  route();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
