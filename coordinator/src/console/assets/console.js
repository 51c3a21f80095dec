// Ferry web console: signs in with an API token and shows this node's view of the
// cluster through the same /v1 API every client uses: jobs with live progress (polled
// about once a second), the selected job's files and error, fleets, cluster members.
//
// Rules this file keeps:
// - Every string that came from the API (job names, URLs, paths, error details) reaches
//   the page through textContent or a text node, never as HTML: names are chosen by
//   callers, and some callers are hostile.
// - The token lives in this tab's sessionStorage only and is sent as
//   `Authorization: Bearer` to this origin only. `/ui#token=...` signs in (the token is
//   then removed from the address bar); `#job=ID` opens that job.
// - No inline code anywhere: the Content-Security-Policy forbids it.
'use strict';

const TOKEN_KEY = 'ferry.console.token';
const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
const CLUSTER_EVERY = 3; // polls between cluster refreshes
const FLEETS_EVERY = 2; // polls between fleet refreshes
const MAX_FLEETS = 10;
// Which actions a job's state makes sense for (the node decides in the end).
const ACTIONS = {
  suspend: new Set(['queued', 'connecting', 'transferring', 'error', 'transient_error']),
  resume: new Set(['suspended', 'error', 'transient_error']),
  complete: new Set(['transferred']),
  cancel: new Set(['queued', 'connecting', 'transferring', 'suspended', 'error',
    'transient_error', 'transferred']),
};

const ui = {
  token: null,
  allUsers: false,
  selected: null, // job id shown in the details panel
  rows: new Map(), // job id -> { tr, cells, buttons }
  jobs: new Map(), // job id -> the last JobInfo listed
  tick: 0,
  timer: null,
  polling: false,
  again: false,
};

const $ = (id) => document.getElementById(id);

// An element with properties and children; strings become text nodes (never HTML).
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'class') node.className = value;
    else if (key.startsWith('data-') || key === 'title' || key === 'type') {
      node.setAttribute(key, String(value));
    } else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function text(value) {
  return value === null || value === undefined || value === '' ? '—' : String(value);
}

function formatBytes(n) {
  if (n === null || n === undefined) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function formatTime(stamp) {
  if (!stamp) return '—';
  const date = new Date(stamp);
  return Number.isNaN(date.getTime()) ? String(stamp) : date.toLocaleString();
}

// Percent of `progress` (bytes_total, bytes_transferred), or null when the size is not
// known yet. Rounded down: 100 % means every byte.
function percent(progress, done) {
  const total = progress.bytes_total;
  if (total === null || total === undefined) return done ? 100 : null;
  if (total === 0) return done ? 100 : 0;
  return Math.min(100, Math.floor((progress.bytes_transferred * 100) / total));
}

function progressCell(cell, progress, done) {
  const pct = percent(progress, done);
  const bar = el('progress', { max: 100, value: pct === null ? 0 : pct });
  const label = el('span', { class: 'pct', text: pct === null ? '? %' : `${pct} %` });
  const bytes = el('span', {
    class: 'muted',
    text: ` ${formatBytes(progress.bytes_transferred)} / ${formatBytes(progress.bytes_total)}`,
  });
  cell.replaceChildren(bar, ' ', label, bytes);
}

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls this node's API with the token; the parsed JSON answer, or an ApiError saying
// what the node answered (its problem+json title, code and detail).
async function api(method, path) {
  const headers = { Authorization: `Bearer ${ui.token}`, Accept: 'application/json' };
  if (method !== 'GET') headers['Idempotency-Key'] = newKey();
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error',
    });
  } catch (e) {
    throw new ApiError(0, `the node did not answer (${e.message})`);
  }
  const body = await response.text();
  let json = null;
  try {
    json = body ? JSON.parse(body) : null;
  } catch (e) {
    json = null;
  }
  if (!response.ok) {
    const problem = json && typeof json === 'object' ? json : {};
    const title = problem.title || `HTTP ${response.status}`;
    const code = problem.code ? ` ${problem.code}` : '';
    const detail = problem.detail || problem.description || '';
    throw new ApiError(response.status, `${method} ${path}: ${title}${code}${detail ? `: ${detail}` : ''}`);
  }
  return json;
}

function setBanner(message) {
  $('banner').textContent = message || '';
  $('banner').hidden = !message;
}

// ---- jobs ----------------------------------------------------------------------

function jobRow(id) {
  const tr = el('tr', { 'data-job-id': id });
  const cells = {};
  for (const name of ['name', 'state', 'progress', 'files', 'owner', 'priority', 'type',
    'home', 'error', 'actions']) {
    cells[name] = el('td', { class: `col-${name}` });
    tr.append(cells[name]);
  }
  const open = el('button', { type: 'button', class: 'link', 'data-select': id });
  cells.name.append(open);
  const buttons = {};
  for (const action of Object.keys(ACTIONS)) {
    buttons[action] = el('button', { type: 'button', 'data-action': action, text: action });
    cells.actions.append(buttons[action], ' ');
  }
  return { tr, cells, open, buttons };
}

function updateJobRow(row, job) {
  const state = String(job.state);
  row.tr.setAttribute('data-state', state.toUpperCase());
  row.tr.classList.toggle('selected', job.id === ui.selected);
  row.open.textContent = job.display_name === '' ? '(no name)' : job.display_name;
  row.open.title = job.id;
  row.cells.state.replaceChildren(el('span', { class: `state state-${state}`, text: state.toUpperCase() }));
  progressCell(row.cells.progress, job.progress, state === 'transferred');
  row.cells.files.textContent = `${job.progress.files_transferred} / ${job.progress.files_total}`;
  row.cells.owner.textContent = text(job.owner);
  row.cells.priority.textContent = text(job.priority);
  row.cells.type.textContent = text(job.type);
  row.cells.home.textContent = text(job.home_node);
  row.cells.error.textContent = job.error ? `${job.error.name} (${job.error.code})` : '';
  row.cells.error.title = job.error ? job.error.description : '';
  for (const [action, button] of Object.entries(row.buttons)) {
    button.disabled = !ACTIONS[action].has(state);
  }
}

function createdOrder(a, b) {
  const ta = a.times ? a.times.created : '';
  const tb = b.times ? b.times.created : '';
  return ta < tb ? -1 : ta > tb ? 1 : a.id < b.id ? -1 : 1;
}

function renderJobs(jobs) {
  const tbody = $('job-rows');
  const seen = new Set();
  jobs.sort(createdOrder).forEach((job, i) => {
    seen.add(job.id);
    let row = ui.rows.get(job.id);
    if (!row) {
      row = jobRow(job.id);
      ui.rows.set(job.id, row);
    }
    updateJobRow(row, job);
    // Move rows only when out of place, so a click in progress is not lost.
    if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
  });
  for (const [id, row] of ui.rows) {
    if (!seen.has(id)) {
      row.tr.remove();
      ui.rows.delete(id);
    }
  }
  ui.jobs = new Map(jobs.map((job) => [job.id, job]));
  $('no-jobs').hidden = jobs.length > 0;
}

async function refreshJobs() {
  try {
    const list = await api('GET', `/v1/jobs${ui.allUsers ? '?all_users=true' : ''}`);
    renderJobs(Array.isArray(list && list.jobs) ? list.jobs : []);
  } catch (e) {
    if (e.status === 403 && ui.allUsers) {
      ui.allUsers = false;
      $('all-users').checked = false;
      throw new ApiError(403, 'Only administrators may list every user\'s jobs.');
    }
    throw e;
  }
}

async function act(id, action) {
  const job = ui.jobs.get(id);
  const name = job ? job.display_name : id;
  if (action === 'cancel'
    && !window.confirm(`Cancel job "${name}"? Its temporary files are deleted.`)) return;
  const result = $('action-result');
  result.textContent = `${action} ${name}…`;
  try {
    const answer = await api('POST', `/v1/jobs/${encodeURIComponent(id)}/${action}`);
    const code = answer && (answer.code_name || answer.code);
    result.textContent = `${action} ${name}: ${text(code)}`;
  } catch (e) {
    if (e.status === 401) return signOut('The node refused the token: sign in again.');
    result.textContent = `${action} ${name} failed: ${e.message}`;
  }
  pollNow();
}

// ---- the selected job ------------------------------------------------------------

function select(id) {
  ui.selected = id;
  history.replaceState(null, '', id ? `#job=${encodeURIComponent(id)}` : location.pathname);
  for (const [rowId, row] of ui.rows) row.tr.classList.toggle('selected', rowId === id);
  $('details').hidden = !id;
  if (id) pollNow();
}

function prop(list, name, value) {
  list.append(el('dt', { text: name }), el('dd', { text: text(value) }));
}

function errorContext(error) {
  const where = [];
  if (error.file_index !== null && error.file_index !== undefined) where.push(`file ${error.file_index}`);
  if (error.protocol) where.push(error.protocol);
  const context = String(error.context_description || error.context || '').replace(/\.$/, '');
  return `Context: ${context}${where.length ? ` (${where.join(', ')})` : ''}`;
}

function renderDetails(job, files) {
  $('details').hidden = false;
  $('details').setAttribute('data-job-id', job.id);
  $('details-name').textContent = job.display_name;
  const props = el('dl', { id: 'details-props' });
  prop(props, 'Id', job.id);
  prop(props, 'State', String(job.state).toUpperCase());
  prop(props, 'Owner', job.owner);
  prop(props, 'Type', job.type);
  prop(props, 'Priority', job.priority);
  prop(props, 'Home node', job.home_node);
  prop(props, 'Bytes', `${formatBytes(job.progress.bytes_transferred)} / ${formatBytes(job.progress.bytes_total)}`);
  prop(props, 'Created', formatTime(job.times && job.times.created));
  prop(props, 'Modified', formatTime(job.times && job.times.modified));
  prop(props, 'Transferred', formatTime(job.times && job.times.transfer_completed));
  prop(props, 'Errors', job.error_count);
  if (job.fleet) prop(props, 'Fleet', `${job.fleet.fleet} (member ${job.fleet.member + 1} of ${job.fleet.members})`);
  $('details-props').replaceWith(props);

  const box = $('details-error');
  box.hidden = !job.error;
  if (job.error) {
    const e = job.error;
    box.replaceChildren(
      el('strong', { text: `${e.name} (${e.code})` }),
      el('p', { text: e.description }),
      el('p', { text: e.detail }),
      el('p', { class: 'muted', text: errorContext(e) }),
    );
  }

  const rows = files.map((file) => {
    const cell = el('td');
    progressCell(cell, file.progress, file.transferred);
    const stats = file.peer_stats || { from_origin: 0, from_peers: 0 };
    return el('tr', { 'data-file-index': file.index },
      el('td', { text: file.index }),
      el('td', { class: 'wrap', text: file.remote_url }),
      el('td', { class: 'wrap', text: file.local_path }),
      cell,
      el('td', { text: `${formatBytes(stats.from_origin)} / ${formatBytes(stats.from_peers)}` }),
      el('td', { text: file.transferred ? 'yes' : 'no' }));
  });
  $('file-rows').replaceChildren(...rows);
}

async function refreshDetails() {
  const id = ui.selected;
  try {
    const path = `/v1/jobs/${encodeURIComponent(id)}`;
    const [job, files] = await Promise.all([api('GET', path), api('GET', `${path}/files`)]);
    if (ui.selected === id) renderDetails(job, (files && files.files) || []);
  } catch (e) {
    if (e.status === 404 || e.status === 400) {
      select(null);
      throw new ApiError(e.status, `Job ${id} is not visible any more (${e.message}).`);
    }
    throw e;
  }
}

// ---- fleets ----------------------------------------------------------------------

function renderFleet(fleet) {
  const rows = (fleet.members || []).map((m) => {
    const cell = el('td');
    progressCell(cell, m.progress, m.state === 'transferred');
    return el('tr', { 'data-state': String(m.state).toUpperCase() },
      el('td', { text: m.node }),
      el('td', { text: m.job }),
      el('td', { text: String(m.state).toUpperCase() }),
      cell,
      el('td', { text: m.error ? `${m.error.name} (${m.error.code})` : '' }));
  });
  const head = el('tr', {}, ...['Node', 'Job', 'State', 'Progress', 'Error']
    .map((h) => el('th', { text: h })));
  return el('div', { class: 'fleet', 'data-fleet-id': fleet.id },
    el('h3', { text: `Fleet ${fleet.id}` }),
    el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows)));
}

async function refreshFleets() {
  const ids = [...new Set([...ui.jobs.values()]
    .filter((job) => job.fleet).map((job) => job.fleet.fleet))].slice(0, MAX_FLEETS);
  $('fleets').hidden = ids.length === 0;
  if (ids.length === 0) return;
  const fleets = await Promise.all(ids.map((id) => api('GET', `/v1/fleets/${encodeURIComponent(id)}`)
    .catch((e) => (e.status === 404 ? null : Promise.reject(e)))));
  $('fleet-list').replaceChildren(...fleets.filter(Boolean).map(renderFleet));
}

// ---- cluster ---------------------------------------------------------------------

async function refreshCluster() {
  const status = await api('GET', '/v1/cluster');
  $('node').textContent = `node ${status.node_id} (${status.role})`;
  $('cluster-summary').textContent = `Leader: ${text(status.leader)} · term ${status.term}`
    + ` · applied ${text(status.last_applied)} · ${status.jobs} jobs in the queue`;
  const rows = (status.members || []).map((m) => el('tr', {
    'data-node-id': m.node_id, 'data-health': m.health,
  },
  el('td', { text: m.node_id === status.leader ? `${m.node_id} (leader)` : m.node_id }),
  el('td', { text: m.role }),
  el('td', { text: text(m.state) }),
  el('td', {}, el('span', { class: `health health-${m.health === 'ok' ? 'ok' : 'bad'}`, text: m.health })),
  el('td', { text: m.api_addr }),
  el('td', { text: m.peer_addr }),
  el('td', { text: text(m.applied_index) }),
  el('td', { text: text(m.matched_index) })));
  $('member-rows').replaceChildren(...rows);
}

// ---- polling and session ---------------------------------------------------------

async function poll() {
  ui.timer = null;
  if (!ui.token) return;
  ui.polling = true;
  const tasks = [refreshJobs().then(() => (ui.tick % FLEETS_EVERY === 0 ? refreshFleets() : null))];
  if (ui.tick % CLUSTER_EVERY === 0) tasks.push(refreshCluster());
  if (ui.selected) tasks.push(refreshDetails());
  const results = await Promise.allSettled(tasks);
  ui.polling = false;
  ui.tick += 1;
  const failures = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
  if (failures.some((e) => e && e.status === 401)) {
    signOut('The node refused the token (401): sign in again.');
    return;
  }
  setBanner(failures.map((e) => (e && e.message) || String(e)).join(' — '));
  $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  if (!ui.token) return;
  if (ui.again) {
    ui.again = false;
    pollNow();
  } else {
    ui.timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
}

function pollNow() {
  if (ui.polling) {
    ui.again = true;
    return;
  }
  clearTimeout(ui.timer);
  poll();
}

function start(token) {
  ui.token = token;
  ui.tick = 0;
  $('login').hidden = true;
  $('console').hidden = false;
  $('logout').hidden = false;
  $('details').hidden = !ui.selected;
  pollNow();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  ui.token = null;
  clearTimeout(ui.timer);
  ui.timer = null;
  for (const row of ui.rows.values()) row.tr.remove();
  ui.rows.clear();
  ui.jobs.clear();
  for (const id of ['file-rows', 'member-rows', 'fleet-list']) $(id).replaceChildren();
  $('node').textContent = '';
  $('updated').textContent = '';
  setBanner(null);
  $('console').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

// `#token=...&job=...`: keep the token in session storage and take it out of the
// address bar and history at once; keep `#job=ID` as the link to that job.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  ui.selected = params.get('job') || null;
  const hash = ui.selected ? `#job=${encodeURIComponent(ui.selected)}` : '';
  history.replaceState(null, '', `${location.pathname}${location.search}${hash}`);
}

function validToken(token) {
  return /^[\x21-\x7e]{1,4096}$/.test(token);
}

function init() {
  readFragment();
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!validToken(token)) {
      $('login-error').textContent = 'A token is printable ASCII without spaces.';
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    $('login-error').textContent = '';
    start(token);
  });
  $('logout').addEventListener('click', () => signOut('Signed out.'));
  $('all-users').addEventListener('change', (event) => {
    ui.allUsers = event.target.checked;
    pollNow();
  });
  $('job-rows').addEventListener('click', (event) => {
    const target = event.target instanceof Element ? event.target : null;
    const row = target && target.closest('tr[data-job-id]');
    if (!row) return;
    const id = row.getAttribute('data-job-id');
    const button = target.closest('button[data-action]');
    if (button) act(id, button.getAttribute('data-action'));
    else if (target.closest('[data-select]')) select(id);
  });
  $('details-close').addEventListener('click', () => select(null));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && ui.token) pollNow();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && validToken(token)) start(token);
  else signOut(token ? 'The stored token is not valid: sign in again.' : '');
}

init();
