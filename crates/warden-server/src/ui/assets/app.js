// warden's web UI. Hand-written, no dependencies, served by `warden serve` itself.
// Every page is drawn from the same JSON API any client uses; nothing here decides what the
// caller may see or do — the server does, and the UI only hides buttons the caller's scopes
// could not use. Text from jobs (logs, names, messages) is only ever set as text, never as HTML.
'use strict';
(() => {
  const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'mutation_detected', 'error'];
  const TERMINAL = new Set(STATUSES.slice(2));
  const LOG_WINDOW = 256 * 1024; // bytes of log fetched at a time
  const LOG_KEEP = 2 * 1024 * 1024; // bytes of log kept on the page while following
  const FLUSH_MS = 100; // new log output is put on the page at most this often

  const main = document.getElementById('main');
  const statusBox = document.getElementById('status');
  let session = null;
  let leave = []; // what to stop when leaving the current page (timers, event streams)

  // ---- DOM and API helpers -----------------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  function link(href, text, attrs) {
    return h('a', Object.assign({ href, 'data-nav': true }, attrs || {}), text);
  }

  function say(text) {
    statusBox.textContent = text;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, opts) {
    opts = opts || {};
    const method = opts.method || 'GET';
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin' };
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    if (method !== 'GET' && session && session.csrf) headers['X-Warden-CSRF'] = session.csrf;
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      toLogin();
      throw new ApiError(401, 'unauthenticated', 'Your session has ended; sign in again.');
    }
    const type = resp.headers.get('content-type') || '';
    const body = type.includes('json') ? await resp.json() : await resp.text();
    if (!resp.ok) {
      const e = (body && body.error) || {};
      throw new ApiError(resp.status, e.code || 'http_' + resp.status, e.message || String(body));
    }
    return body;
  }

  function toLogin() {
    location.assign('/ui/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  function errorBox(err) {
    const code = err && err.code ? err.code + ': ' : '';
    return h('p', { class: 'error', role: 'alert' }, code + (err && err.message ? err.message : String(err)));
  }

  function can(scope) {
    return !!session && (session.scopes.includes('admin') || session.scopes.includes(scope));
  }

  function badge(status) {
    return h('span', { class: 'badge st-' + status }, status.replace('_', ' '));
  }

  function shortSha(sha) {
    return sha ? sha.slice(0, 10) : '';
  }

  function ms(text) {
    return text ? Date.parse(text) : NaN;
  }

  function duration(a, b) {
    const start = ms(a);
    if (isNaN(start)) return '';
    const end = b ? ms(b) : Date.now();
    const s = Math.max(0, (end - start) / 1000);
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
  }

  function when(text) {
    if (!text) return '';
    const d = new Date(text);
    return h('time', { datetime: text, title: text }, d.toLocaleString());
  }

  function bytes(n) {
    if (n < 1024) return n + ' B';
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let i = -1;
    do {
      v /= 1024;
      i++;
    } while (v >= 1024 && i < units.length - 1);
    return v.toFixed(v < 10 ? 1 : 0) + ' ' + units[i];
  }

  function render(...nodes) {
    main.replaceChildren(...nodes);
    const h1 = main.querySelector('h1');
    if (h1) {
      h1.setAttribute('tabindex', '-1');
      h1.focus({ preventScroll: true });
      document.title = h1.textContent + ' · warden';
    }
  }

  function field(label, control) {
    const id = control.id || 'f-' + (control.name || Math.random().toString(36).slice(2));
    control.id = id;
    return h('p', {}, h('label', { for: id }, label), control);
  }

  function select(name, values, current, labels) {
    return h('select', { name }, values.map((v, i) =>
      h('option', { value: v, selected: v === current }, labels ? labels[i] : (v || 'any'))));
  }

  // ---- Navigation --------------------------------------------------------------------------

  function go(url) {
    history.pushState(null, '', url);
    route();
  }

  function route() {
    for (const stop of leave.splice(0)) stop();
    say('');
    const path = location.pathname;
    const section = path.startsWith('/ui/submit') ? 'submit'
      : path.startsWith('/ui/job-types') ? 'job-types'
        : path.startsWith('/ui/admin') ? 'admin' : 'jobs';
    for (const a of document.querySelectorAll('header nav a')) {
      if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    let m;
    let page;
    if (path === '/ui/' || path === '/ui/jobs') page = jobsPage();
    else if ((m = path.match(/^\/ui\/jobs\/([0-9a-fA-F-]{36})$/))) page = jobPage(m[1]);
    else if (path === '/ui/submit') page = submitPage();
    else if (path === '/ui/job-types') page = jobTypesPage();
    else if (path === '/ui/admin') page = adminPage();
    else {
      render(h('h1', {}, 'Not found'), h('p', {}, 'There is no such page. ', link('/ui/', 'See the jobs.')));
      return;
    }
    page.catch((err) => {
      if (err && err.status === 401) return;
      render(h('h1', {}, 'Something went wrong'), errorBox(err));
    });
  }

  document.addEventListener('click', (ev) => {
    const a = ev.target.closest && ev.target.closest('a[data-nav]');
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    go(a.getAttribute('href'));
  });
  window.addEventListener('popstate', route);

  // ---- Jobs --------------------------------------------------------------------------------

  function jobRow(job) {
    const repo = job.repo_name ? job.repo_name + (job.sha ? '@' + shortSha(job.sha) : '') : '';
    return h('tr', { 'data-job': job.job_id },
      h('td', { class: 'mono' }, link('/ui/jobs/' + job.job_id, job.job_id.slice(-12), { 'aria-label': 'Job ' + job.job_id })),
      h('td', {}, job.job_type),
      h('td', {}, badge(job.status)),
      h('td', {}, job.reason || ''),
      h('td', { class: 'mono' }, repo),
      h('td', { class: 'num' }, job.started_at ? duration(job.started_at, job.finished_at) : ''),
      h('td', { class: 'num' }, job.exit_code === null || job.exit_code === undefined ? '' : job.exit_code),
      h('td', {}, when(job.created_at)));
  }

  async function jobsPage() {
    const q = new URLSearchParams(location.search);
    const filters = {};
    for (const k of ['status', 'job_type', 'repo', 'tenant']) if (q.get(k)) filters[k] = q.get(k);
    const cursor = q.get('cursor');
    const types = await api('/job-types').then((r) => r.job_types.map((t) => t.name), () => []);
    if (filters.job_type && !types.includes(filters.job_type)) types.push(filters.job_type);
    const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs' },
      field('Status', select('status', [''].concat(STATUSES), filters.status || '')),
      field('Job type', select('job_type', [''].concat(types), filters.job_type || '')),
      field('Repository', h('input', { name: 'repo', value: filters.repo || '', type: 'text' })),
      can('admin') ? field('Tenant', h('input', { name: 'tenant', value: filters.tenant || '', type: 'text' })) : null,
      h('p', {}, h('button', { type: 'submit' }, 'Filter')));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
      go('/ui/' + (p.toString() ? '?' + p : ''));
    });
    const tbody = h('tbody');
    const table = h('table', { class: 'jobs' },
      h('caption', { class: 'sr-only' }, 'Jobs, newest first'),
      h('thead', {}, h('tr', {}, ['Job', 'Type', 'Status', 'Reason', 'Repository', 'Duration', 'Exit', 'Submitted']
        .map((c) => h('th', { scope: 'col' }, c)))),
      tbody);
    const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
    render(h('h1', {}, 'Jobs'), form, table, pager);

    const load = async () => {
      const p = new URLSearchParams(filters);
      if (cursor) p.set('cursor', cursor);
      p.set('limit', '50');
      const page = await api('/jobs?' + p);
      tbody.replaceChildren(...page.jobs.map(jobRow));
      if (!page.jobs.length) tbody.append(h('tr', {}, h('td', { colspan: 8 }, 'No jobs match.')));
      const base = new URLSearchParams(filters);
      const older = new URLSearchParams(filters);
      if (page.next_cursor) older.set('cursor', page.next_cursor);
      pager.replaceChildren(
        cursor ? link('/ui/' + (base.toString() ? '?' + base : ''), 'Newest') : '',
        page.next_cursor ? link('/ui/?' + older, 'Older jobs') : '');
    };
    await load();
    if (!cursor) {
      // The first page follows the queue: new jobs appear and running ones change as they do.
      const timer = setInterval(() => {
        if (!document.hidden) load().catch((e) => say('Could not refresh: ' + e.message));
      }, 1500);
      leave.push(() => clearInterval(timer));
    }
  }

  // ---- One job -----------------------------------------------------------------------------

  function recordList(job) {
    const rows = [];
    const add = (k, v) => {
      if (v !== null && v !== undefined && v !== '') rows.push(h('dt', {}, k), h('dd', {}, v));
    };
    add('Status', [badge(job.status), job.reason ? ' ' + job.reason : '']);
    add('Job type', job.job_type);
    add('Tenant', job.tenant);
    if (job.repo_name) {
      add('Repository', h('span', { class: 'mono' }, job.repo_name + (job.sha ? '@' + job.sha : '')));
      add('Ref', job.ref);
    }
    add('Image', job.image);
    add('Command', job.inline_argv ? h('code', {}, job.inline_argv.join(' ')) : null);
    add('Params', Object.keys(job.params).length
      ? h('code', {}, Object.entries(job.params).map(([k, v]) => k + '=' + v).join('  ')) : null);
    add('Submitted', when(job.created_at));
    add('Started', when(job.started_at));
    add('Finished', when(job.finished_at));
    if (job.started_at) add('Duration', duration(job.started_at, job.finished_at));
    if (job.exit_code !== null && job.exit_code !== undefined) add('Exit code', String(job.exit_code));
    add('Signal', job.signal === null || job.signal === undefined ? null : String(job.signal));
    add('Attempts', job.attempts + ' of ' + job.max_attempts);
    const r = job.resources;
    if (r) {
      add('Resources', [
        'wall ' + r.wall_ms + ' ms, cpu ' + (r.user_cpu_ms + r.system_cpu_ms) + ' ms, max RSS ' + bytes(r.max_rss_kb * 1024),
        r.peak_memory_bytes ? ', peak memory ' + bytes(r.peak_memory_bytes) : '',
        r.cpu_throttled_ms ? ', throttled ' + r.cpu_throttled_ms + ' ms' : ''].join(''));
    }
    const enforced = Object.entries(job.enforcement || {});
    if (enforced.length) {
      add('Limits', h('ul', {}, enforced.map(([k, v]) => h('li', {}, k + ': ' + v))));
    }
    add('Log', bytes(job.stdout_bytes) + ' stdout, ' + bytes(job.stderr_bytes) + ' stderr' + (job.log_truncated ? ' (truncated at the output cap)' : ''));
    if (job.artifact_bytes) add('Artifacts', bytes(job.artifact_bytes));
    if (job.unsafe_fallback) add('Isolation', h('strong', { class: 'warn' }, 'ran without the kernel sandbox (unsafe_fallback)'));
    if (job.cancel_requested && !TERMINAL.has(job.status)) add('Cancel', 'requested');
    if (job.warnings && job.warnings.length) {
      add('Warnings', h('ul', { class: 'warn' }, job.warnings.map((w) => h('li', {}, w))));
    }
    return h('dl', { class: 'record' }, rows);
  }

  function invariantsSection(job) {
    const inv = job.invariants;
    if (!inv) return null;
    const yes = (v) => (v === true ? 'yes' : v === false ? 'NO' : 'not checked');
    return h('section', { 'aria-labelledby': 'h-inv' },
      h('h2', { id: 'h-inv' }, 'Repository invariants'),
      h('dl', { class: 'record' },
        h('dt', {}, 'Worktree read-only'), h('dd', {}, yes(inv.read_only_ok)),
        h('dt', {}, 'Clean-tree proof'), h('dd', {}, yes(inv.clean_tree_ok)),
        inv.tree ? [h('dt', {}, 'Tree'), h('dd', { class: 'mono' }, inv.tree)] : null,
        inv.changed_count ? [h('dt', {}, 'Changed paths'), h('dd', {}, String(inv.changed_count))] : null),
      inv.changed_paths && inv.changed_paths.length
        ? h('ul', { class: 'mono changed-paths', 'aria-label': 'Changed paths' }, inv.changed_paths.map((p) => h('li', {}, p)))
        : null);
  }

  function stagesSection(job) {
    if (!job.stages || !job.stages.length) return null;
    return h('section', { 'aria-labelledby': 'h-stages' },
      h('h2', { id: 'h-stages' }, 'Stages'),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Stage', 'Status', 'Exit', 'Started', 'Duration', 'Output (stdout bytes)']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, job.stages.map((s) => h('tr', {},
          h('td', {}, s.name + (s.always ? ' (always)' : '')),
          h('td', {}, badge(s.status)),
          h('td', { class: 'num' }, s.exit_code === null ? (s.signal ? 'signal ' + s.signal : '') : s.exit_code),
          h('td', { class: 'num' }, s.started_ms === null ? '' : s.started_ms + ' ms'),
          h('td', { class: 'num' }, s.duration_ms === null ? '' : s.duration_ms + ' ms'),
          h('td', { class: 'num' }, s.stdout[0] + '–' + s.stdout[1]))))));
  }

  async function testsSection(id, holder) {
    const r = await api('/jobs/' + id + '/tests?limit=500');
    if (!r.counts) {
      holder.replaceChildren();
      return;
    }
    const c = r.counts;
    holder.replaceChildren(
      h('h2', { id: 'h-tests' }, 'Tests'),
      h('p', {}, c.total + ' tests: ' + c.passed + ' passed, ' + c.failed + ' failed, ' + c.error + ' errors, ' + c.skipped + ' skipped' +
        (c.truncated ? ' (only the first 50,000 are listed)' : '')),
      h('table', { class: 'tests' },
        h('caption', { class: 'sr-only' }, 'Test cases, failures first'),
        h('thead', {}, h('tr', {}, ['Status', 'Test', 'Suite', 'Time', 'Message'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, r.tests.map((t) => h('tr', { 'data-status': t.status },
          h('td', {}, badge(t.status), t.flaky ? h('span', { class: 'badge warn', title: 'passed and failed at the same commit' }, 'flaky') : ''),
          h('td', { class: 'mono' }, (t.classname ? t.classname + '.' : '') + t.name),
          h('td', {}, t.suite),
          h('td', { class: 'num' }, t.duration_ms === null ? '' : t.duration_ms + ' ms'),
          h('td', {}, t.message ? h('details', { class: 'msg' }, h('summary', {}, t.message.split('\n')[0].slice(0, 120)), h('pre', {}, t.message)) : ''))))),
      r.next_cursor ? h('p', { class: 'help' }, 'More test cases: GET /jobs/' + id + '/tests?cursor=' + r.next_cursor) : null);
  }

  function artifactHref(id, entry) {
    let path;
    if (entry.path_hex) {
      path = entry.path_hex.replace(/../g, (b) => {
        const n = parseInt(b, 16);
        const ch = String.fromCharCode(n);
        return n === 0x2f ? '/' : /[A-Za-z0-9._~-]/.test(ch) ? ch : '%' + b.toUpperCase();
      });
    } else {
      path = entry.path.split('/').map(encodeURIComponent).join('/');
    }
    return '/jobs/' + encodeURIComponent(id) + '/artifacts/' + path;
  }

  async function artifactsSection(id, holder) {
    const r = await api('/jobs/' + id + '/artifacts');
    const filter = h('input', { type: 'search', id: 'artifact-filter', placeholder: 'path contains…' });
    const tbody = h('tbody');
    const draw = () => {
      const needle = filter.value.toLowerCase();
      const rows = r.artifacts.filter((a) => !needle || a.path.toLowerCase().includes(needle));
      tbody.replaceChildren(...rows.map((a) => h('tr', {},
        h('td', { class: 'mono' }, a.kind === 'file'
          ? h('a', { href: artifactHref(id, a), download: a.path.split('/').pop() }, a.path)
          : a.path + (a.kind === 'dir' ? '/' : '')),
        h('td', {}, a.kind),
        h('td', { class: 'num' }, a.kind === 'file' ? bytes(a.size) : ''))));
      if (!rows.length) tbody.append(h('tr', {}, h('td', { colspan: 3 }, r.artifacts.length ? 'Nothing matches.' : 'No artifacts.')));
    };
    filter.addEventListener('input', draw);
    draw();
    holder.replaceChildren(
      h('h2', { id: 'h-artifacts' }, 'Artifacts'),
      r.artifacts.length > 8 ? h('p', {}, h('label', { for: 'artifact-filter' }, 'Filter '), filter) : null,
      h('table', { class: 'artifacts' },
        h('caption', { class: 'sr-only' }, 'Artifact files'),
        h('thead', {}, h('tr', {}, ['Path', 'Kind', 'Size'].map((t) => h('th', { scope: 'col' }, t)))),
        tbody),
      r.truncated ? h('p', { class: 'help' }, 'Only the first 10,000 entries are listed.') : null);
  }

  async function jobPage(id) {
    let job = await api('/jobs/' + id);
    const head = h('div');
    const record = h('section', { 'aria-labelledby': 'h-record' });
    const extras = h('div');
    const tests = h('section', { 'aria-labelledby': 'h-tests' });
    const artifacts = h('section', { 'aria-labelledby': 'h-artifacts' });
    const log = logViewer(id, () => job);
    // The title and the Cancel button are made once: a refresh moves them, never replaces
    // them, so a click in flight always lands.
    const title = h('h1', {}, job.job_type, ' ', h('span', { class: 'mono' }, id.slice(-12)));
    const statusLine = h('p');
    head.append(title, statusLine);
    const cancel = h('button', {
      type: 'button', class: 'danger', id: 'cancel',
      onclick: async () => {
        cancel.disabled = true;
        try {
          job = await api('/jobs/' + id + '/cancel', { method: 'POST' });
          say('Cancellation requested.');
          draw();
        } catch (e) {
          cancel.disabled = false;
          say('Could not cancel: ' + e.message);
        }
      },
    }, 'Cancel job');
    let drawn = '';
    const draw = () => {
      const key = JSON.stringify(job);
      if (key === drawn) return;
      drawn = key;
      const open = !TERMINAL.has(job.status) && can('cancel');
      statusLine.replaceChildren(badge(job.status), ' ', job.reason || '', ' ', open ? cancel : '');
      record.replaceChildren(h('h2', { id: 'h-record' }, 'Record'), recordList(job));
      extras.replaceChildren(invariantsSection(job) || '', stagesSection(job) || '');
    };
    draw();
    render(head, record, extras, log.element, tests, artifacts);
    const finished = async () => {
      await Promise.all([
        testsSection(id, tests).catch((e) => tests.replaceChildren(errorBox(e))),
        artifactsSection(id, artifacts).catch((e) => artifacts.replaceChildren(errorBox(e))),
      ]);
    };
    if (TERMINAL.has(job.status)) {
      await finished();
      return;
    }
    let done = false;
    const timer = setInterval(async () => {
      if (done || document.hidden) return;
      try {
        job = await api('/jobs/' + id);
        const hadFocus = document.activeElement === cancel;
        draw();
        if (hadFocus && !cancel.isConnected) title.focus();
        if (TERMINAL.has(job.status)) {
          done = true;
          clearInterval(timer);
          say('The job ended: ' + job.status.replace('_', ' ') + '.');
          await finished();
        }
      } catch (e) {
        say('Could not refresh: ' + e.message);
      }
    }, 1000);
    leave.push(() => clearInterval(timer));
  }

  // ---- The log -----------------------------------------------------------------------------

  // ANSI SGR (colours, bold, italic, underline) to spans; every other escape is dropped. An
  // escape split between two chunks is carried to the next.
  class Ansi {
    constructor() {
      this.carry = '';
      this.reset();
    }

    reset() {
      this.fg = null;
      this.bg = null;
      this.b = false;
      this.i = false;
      this.u = false;
    }

    sgr(params) {
      const p = params === '' ? [0] : params.split(';').map((x) => (x === '' ? 0 : Number(x)));
      for (let k = 0; k < p.length; k++) {
        const n = p[k];
        if (n === 0) this.reset();
        else if (n === 1) this.b = true;
        else if (n === 3) this.i = true;
        else if (n === 4) this.u = true;
        else if (n === 22) this.b = false;
        else if (n === 23) this.i = false;
        else if (n === 24) this.u = false;
        else if (n >= 30 && n <= 37) this.fg = n - 30;
        else if (n >= 90 && n <= 97) this.fg = n - 90 + 8;
        else if (n === 39) this.fg = null;
        else if (n >= 40 && n <= 47) this.bg = n - 40;
        else if (n >= 100 && n <= 107) this.bg = n - 100 + 8;
        else if (n === 49) this.bg = null;
        else if ((n === 38 || n === 48) && p[k + 1] === 5) {
          const c = p[k + 2];
          const v = c < 16 ? c : Ansi.xterm(c);
          if (n === 38) this.fg = v; else this.bg = v;
          k += 2;
        } else if ((n === 38 || n === 48) && p[k + 1] === 2) {
          const v = 'rgb(' + [p[k + 2], p[k + 3], p[k + 4]].map((x) => Math.min(255, x || 0)).join(',') + ')';
          if (n === 38) this.fg = v; else this.bg = v;
          k += 4;
        }
      }
    }

    static xterm(c) {
      if (c >= 232) {
        const g = 8 + (c - 232) * 10;
        return 'rgb(' + g + ',' + g + ',' + g + ')';
      }
      const i = c - 16;
      const l = (x) => (x ? 55 + x * 40 : 0);
      return 'rgb(' + l(Math.floor(i / 36)) + ',' + l(Math.floor(i / 6) % 6) + ',' + l(i % 6) + ')';
    }

    span(text) {
      if (this.fg === null && this.bg === null && !this.b && !this.i && !this.u) return document.createTextNode(text);
      const s = document.createElement('span');
      const cls = [];
      if (typeof this.fg === 'number') cls.push('fg' + this.fg); else if (this.fg) s.style.color = this.fg;
      if (typeof this.bg === 'number') cls.push('bg' + this.bg); else if (this.bg) s.style.backgroundColor = this.bg;
      if (this.b) cls.push('b');
      if (this.i) cls.push('i');
      if (this.u) cls.push('u');
      s.className = cls.join(' ');
      s.textContent = text;
      return s;
    }

    // An escape not yet complete: the start of the next chunk finishes it.
    static PARTIAL = /^\x1b(?:\[[0-9;?]*|\][^\x07]*)?$/;

    static ESC = /\x1b(?:\[([0-9;?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])/g;

    render(text) {
      text = this.carry + text;
      this.carry = '';
      const cut = text.lastIndexOf('\x1b');
      if (cut >= 0 && text.length - cut < 256 && Ansi.PARTIAL.test(text.slice(cut))) {
        this.carry = text.slice(cut);
        text = text.slice(0, cut);
      }
      const frag = document.createDocumentFragment();
      let last = 0;
      Ansi.ESC.lastIndex = 0;
      let m;
      while ((m = Ansi.ESC.exec(text))) {
        if (m.index > last) frag.append(this.span(text.slice(last, m.index)));
        if (m[2] === 'm') this.sgr(m[1]);
        last = Ansi.ESC.lastIndex;
      }
      if (last < text.length) frag.append(this.span(text.slice(last)));
      return frag;
    }
  }

  // The log of one stream: the last window fetched by offset, then followed live over SSE
  // from exactly where the window ended; a dropped connection resumes from the last byte shown
  // (never from the start, never twice). Earlier output is fetched a window at a time on
  // request, and while following only the last LOG_KEEP bytes stay on the page: a 1 GiB log is
  // never loaded whole.
  function logViewer(id, current) {
    const enc = new TextEncoder();
    const tabs = ['stdout', 'stderr'].map((s) => h('button', {
      type: 'button', role: 'tab', id: 'tab-' + s, 'aria-controls': 'log', 'aria-selected': 'false', tabindex: '-1',
    }, s));
    const pre = h('pre', { class: 'log', id: 'log', role: 'tabpanel', tabindex: '0', 'aria-label': 'Log' });
    const note = h('p', { class: 'log-note', id: 'log-note' });
    const earlier = h('button', { type: 'button', id: 'log-earlier', hidden: true }, 'Load earlier output');
    const follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
    const element = h('section', { 'aria-labelledby': 'h-log' },
      h('h2', { id: 'h-log' }, 'Log'),
      h('div', { class: 'tabs' },
        h('div', { role: 'tablist', 'aria-label': 'Log stream' }, tabs),
        h('span', { class: 'spacer' }),
        earlier,
        h('label', { for: 'log-follow' }, follow, ' Scroll with new output')),
      note, pre);

    let stream = null;
    let top = 0; // byte offset of the first byte on the page
    let next = 0; // byte offset just past the last byte on the page
    let chunks = []; // {node, len} of what is on the page, in order, for trimming
    let kept = 0;
    let source = null;
    let retry = null;
    let ended = false;
    let ansi = new Ansi();

    const stop = () => {
      if (source) source.close();
      source = null;
      clearTimeout(retry);
    };
    leave.push(() => clearTimeout(flushTimer));
    leave.push(stop);

    const atBottom = () => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;

    // Output arriving while following is put on the page at most every FLUSH_MS: one layout
    // per batch instead of one per event, so a chatty job costs the browser (and the machine)
    // little.
    let pending = '';
    let pendingLen = 0;
    let flushTimer = null;
    const flush = () => {
      flushTimer = null;
      if (!pendingLen && !pending) return;
      const text = pending;
      const len = pendingLen;
      pending = '';
      pendingLen = 0;
      append(text, len);
    };
    const queue = (text, len) => {
      pending += text;
      pendingLen += len;
      if (!flushTimer) flushTimer = setTimeout(flush, FLUSH_MS);
    };

    const append = (text, len) => {
      const stick = follow.checked || atBottom();
      const span = h('span');
      span.append(ansi.render(text));
      pre.append(span);
      chunks.push({ node: span, len });
      kept += len;
      while (kept > LOG_KEEP && chunks.length > 1) {
        const first = chunks.shift();
        first.node.remove();
        kept -= first.len;
        top += first.len;
      }
      earlier.hidden = top === 0;
      if (stick) pre.scrollTop = pre.scrollHeight;
    };

    const rawWindow = async (from, limit) => {
      const resp = await fetch('/jobs/' + id + '/logs?format=raw&stream=' + stream + '&offset=' + from + '&limit=' + limit,
        { credentials: 'same-origin' });
      if (resp.status === 401) toLogin();
      if (!resp.ok) throw new ApiError(resp.status, 'log', 'could not read the log (' + resp.status + ')');
      return {
        data: new Uint8Array(await resp.arrayBuffer()),
        length: Number(resp.headers.get('x-warden-stream-length') || 0),
      };
    };

    const connect = () => {
      stop();
      if (ended) return;
      const es = new EventSource('/jobs/' + id + '/logs?stream=' + stream + '&follow=true&offset=' + next);
      source = es;
      es.addEventListener('log', (ev) => {
        const d = JSON.parse(ev.data);
        if (d.next_offset <= next) return; // already on the page
        let text = d.text;
        if (d.offset < next) text = new TextDecoder().decode(enc.encode(text).slice(next - d.offset));
        queue(text, d.next_offset - Math.max(d.offset, next));
        next = d.next_offset;
        note.textContent = 'Following… ' + bytes(next) + ' so far.';
      });
      es.addEventListener('end', (ev) => {
        const d = JSON.parse(ev.data);
        ended = true;
        stop();
        clearTimeout(flushTimer);
        flush();
        note.textContent = 'The job ended (' + d.status.replace('_', ' ') + '); ' + bytes(d.next_offset) + ' of ' + stream +
          (d.truncated ? ', truncated at the output cap.' : '.');
      });
      es.onerror = () => {
        // EventSource would reconnect from the URL's offset, repeating what is shown: reconnect
        // ourselves from the last byte on the page instead.
        stop();
        if (ended) return;
        note.textContent = 'Connection lost; reconnecting from byte ' + next + '…';
        retry = setTimeout(connect, 1000);
      };
    };

    const open = async (which) => {
      stop();
      stream = which;
      for (const t of tabs) {
        const on = t.textContent === which;
        t.setAttribute('aria-selected', on ? 'true' : 'false');
        t.tabIndex = on ? 0 : -1;
      }
      pre.setAttribute('aria-label', which + ' log');
      pre.replaceChildren();
      chunks = [];
      kept = 0;
      ended = false;
      ansi = new Ansi();
      // The record's length says where the last window starts; a job with no output yet is
      // followed from its first byte straight away.
      const job = current();
      const known = which === 'stdout' ? job.stdout_bytes : job.stderr_bytes;
      const start = Math.max(0, known - LOG_WINDOW);
      let data = known > 0 ? (await rawWindow(start, LOG_WINDOW)).data : new Uint8Array(0);
      top = start;
      // Begin and end on whole lines: the follow continues exactly at the end.
      if (start > 0) {
        const nl = data.indexOf(10);
        if (nl >= 0) {
          data = data.subarray(nl + 1);
          top += nl + 1;
        }
      }
      const lastNl = data.lastIndexOf(10);
      if (lastNl >= 0 && lastNl < data.length - 1) data = data.subarray(0, lastNl + 1);
      next = top + data.length;
      if (data.length) append(new TextDecoder().decode(data), data.length);
      earlier.hidden = top === 0;
      note.textContent = top > 0 ? 'Showing from byte ' + top + '.' : '';
      connect();
    };

    earlier.addEventListener('click', async () => {
      const from = Math.max(0, top - LOG_WINDOW);
      const win = await rawWindow(from, top - from);
      let data = win.data;
      let start = from;
      if (from > 0) {
        const nl = data.indexOf(10);
        if (nl >= 0) {
          data = data.subarray(nl + 1);
          start += nl + 1;
        }
      }
      const span = h('span');
      span.append(new Ansi().render(new TextDecoder().decode(data)));
      pre.prepend(span);
      chunks.unshift({ node: span, len: data.length });
      top = start;
      earlier.hidden = top === 0;
      note.textContent = top > 0 ? 'Showing from byte ' + top + '.' : 'Showing the whole log.';
    });

    tabs.forEach((t, i) => {
      t.addEventListener('click', () => open(t.textContent).catch((e) => { note.textContent = e.message; }));
      t.addEventListener('keydown', (ev) => {
        if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
        const other = tabs[(i + 1) % tabs.length];
        other.focus();
        other.click();
      });
    });

    const first = current();
    open(first.stderr_bytes > 0 && first.stdout_bytes === 0 && TERMINAL.has(first.status) ? 'stderr' : 'stdout')
      .catch((e) => { note.textContent = e.message; });
    return { element };
  }

  // ---- Submit ------------------------------------------------------------------------------

  async function submitPage() {
    const types = (await api('/job-types')).job_types;
    if (!types.length) {
      render(h('h1', {}, 'Submit a job'), h('p', {}, 'No job type is available to you.'));
      return;
    }
    const wanted = new URLSearchParams(location.search).get('type');
    let current = types.find((t) => t.name === wanted) || types[0];
    const typeSelect = select('job_type', types.map((t) => t.name), current.name);
    typeSelect.id = 'job_type';
    const specific = h('div');
    const problem = h('div', { 'aria-live': 'assertive' });
    const drawSpecific = () => {
      const repo = h('input', { type: 'text', name: 'repo_name', id: 'repo_name', required: current.requires_repo });
      const rev = h('input', { type: 'text', name: 'rev', id: 'rev', placeholder: 'main, v1.2, HEAD or a full sha', spellcheck: 'false' });
      specific.replaceChildren(
        h('p', { class: 'help' }, current.stages && current.stages.length
          ? 'Stages: ' + current.stages.join(' → ')
          : h('code', {}, current.argv.join(' '))),
        h('fieldset', {},
          h('legend', {}, current.requires_repo ? 'Repository (required)' : 'Repository (optional)'),
          field('Repository name', repo),
          field('Ref or sha', rev)),
        current.allowed_params.length
          ? h('fieldset', {}, h('legend', {}, 'Params'),
            current.allowed_params.map((p) => field(p, h('input', { type: 'text', name: 'param:' + p, id: 'param-' + p }))))
          : h('p', { class: 'help' }, 'This job type takes no params.'));
    };
    typeSelect.addEventListener('change', () => {
      current = types.find((t) => t.name === typeSelect.value);
      drawSpecific();
    });
    drawSpecific();
    const form = h('form', { class: 'stack', 'aria-labelledby': 'h-submit' },
      field('Job type', typeSelect),
      specific,
      field('Idempotency key (optional)', h('input', { type: 'text', name: 'idempotency_key', id: 'idempotency_key' })),
      h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Submit')),
      problem);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { job_type: typeSelect.value, params: {} };
      for (const [k, v] of new FormData(form)) {
        if (!v) continue;
        if (k.startsWith('param:')) body.params[k.slice(6)] = v;
        else if (k === 'repo_name' || k === 'idempotency_key') body[k] = v;
        else if (k === 'rev') {
          if (/^[0-9a-f]{40}$/.test(v)) body.sha = v; else body.ref = v;
        }
      }
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      try {
        const r = await api('/jobs', { method: 'POST', body });
        say(r.idempotent_replay ? 'An earlier submission with that key.' : 'Submitted.');
        go('/ui/jobs/' + r.job_id);
      } catch (e) {
        button.disabled = false;
        problem.replaceChildren(errorBox(e));
      }
    });
    render(h('h1', { id: 'h-submit' }, 'Submit a job'), can('submit') ? form
      : h('p', {}, 'Your token cannot submit jobs (it lacks the submit scope).'));
  }

  // ---- Job types ---------------------------------------------------------------------------

  async function jobTypesPage() {
    const types = (await api('/job-types')).job_types;
    render(h('h1', {}, 'Job types'),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Name', 'Runs', 'Timeout', 'Repository', 'Params', 'Network', ''].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, types.map((t) => h('tr', {},
          h('th', { scope: 'row' }, t.name),
          h('td', {}, t.stages && t.stages.length ? 'stages: ' + t.stages.join(' → ') : h('code', {}, t.argv.join(' '))),
          h('td', { class: 'num' }, t.timeout_s + ' s'),
          h('td', {}, t.requires_repo ? 'required' : 'optional'),
          h('td', {}, t.allowed_params.join(', ')),
          h('td', {}, t.egress && t.egress.length ? 'egress: ' + t.egress.join(', ') : t.network ? 'host' : 'none'),
          h('td', {}, can('submit') ? link('/ui/submit?type=' + encodeURIComponent(t.name), 'Submit', { 'aria-label': 'Submit ' + t.name }) : ''))))));
  }

  // ---- Admin: tokens and the audit log -----------------------------------------------------

  async function adminPage() {
    if (!can('admin')) {
      render(h('h1', {}, 'Admin'), h('p', {}, 'Tokens and the audit log need a token with the admin scope.'));
      return;
    }
    const tokens = h('tbody');
    const shown = h('div', { 'aria-live': 'polite' });
    const audit = h('tbody');
    const auditPager = h('nav', { class: 'pager', 'aria-label': 'Audit pages' });
    const loadTokens = async () => {
      const r = await api('/tokens');
      tokens.replaceChildren(...r.tokens.map((t) => h('tr', {},
        h('td', { class: 'mono' }, t.id), h('td', {}, t.tenant), h('td', {}, t.name || ''),
        h('td', {}, t.scopes.join(', ')), h('td', {}, when(t.created_at)), h('td', {}, when(t.expires_at)),
        h('td', {}, t.revoked_at ? when(t.revoked_at) : h('button', {
          type: 'button', class: 'danger', 'aria-label': 'Revoke token ' + t.id,
          onclick: async () => {
            try {
              await api('/tokens/' + encodeURIComponent(t.id) + '/revoke', { method: 'POST' });
              say('Token ' + t.id + ' revoked.');
              await loadTokens();
            } catch (e) {
              say('Could not revoke: ' + e.message);
            }
          },
        }, 'Revoke')))));
    };
    const loadAudit = async (cursor) => {
      const r = await api('/audit?limit=100' + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
      audit.replaceChildren(...r.entries.map((e) => h('tr', {},
        h('td', {}, when(e.at)), h('td', {}, e.action), h('td', {}, e.tenant || ''), h('td', { class: 'mono' }, e.token_id || ''),
        h('td', {}, e.client || ''), h('td', { class: 'mono' }, e.target || ''), h('td', {}, e.outcome), h('td', {}, e.detail || ''))));
      auditPager.replaceChildren(
        cursor ? h('button', { type: 'button', onclick: () => loadAudit(null) }, 'Newest') : '',
        r.next_cursor ? h('button', { type: 'button', onclick: () => loadAudit(r.next_cursor) }, 'Older entries') : '');
    };
    const scopes = ['read', 'submit', 'cancel', 'admin'];
    const create = h('form', { class: 'inline', 'aria-labelledby': 'h-new-token' },
      field('Tenant', h('input', { type: 'text', name: 'tenant', id: 'new-tenant', required: true, value: session.tenant })),
      field('Name', h('input', { type: 'text', name: 'name', id: 'new-name' })),
      h('fieldset', {}, h('legend', {}, 'Scopes'), scopes.map((s) => h('label', {},
        h('input', { type: 'checkbox', name: 'scope', value: s, checked: s === 'read' }), ' ' + s + ' '))),
      field('Expires in (seconds)', h('input', { type: 'number', name: 'expires_in_s', id: 'new-expires', min: '1' })),
      h('p', {}, h('button', { type: 'submit' }, 'Create token')));
    create.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const f = new FormData(create);
      const body = { tenant: f.get('tenant'), scopes: f.getAll('scope') };
      if (f.get('name')) body.name = f.get('name');
      if (f.get('expires_in_s')) body.expires_in_s = Number(f.get('expires_in_s'));
      try {
        const r = await api('/tokens', { method: 'POST', body });
        shown.replaceChildren(h('p', { class: 'token-once' }, 'The new token (shown this once): ', h('code', {}, r.token)));
        await loadTokens();
      } catch (e) {
        shown.replaceChildren(errorBox(e));
      }
    });
    render(h('h1', {}, 'Admin'),
      h('h2', {}, 'Tokens'),
      h('table', {}, h('thead', {}, h('tr', {}, ['Id', 'Tenant', 'Name', 'Scopes', 'Created', 'Expires', 'Revoked'].map((c) => h('th', { scope: 'col' }, c)))), tokens),
      h('h2', { id: 'h-new-token' }, 'New token'), create, shown,
      h('h2', {}, 'Audit log'),
      h('table', {}, h('thead', {}, h('tr', {}, ['At', 'Action', 'Tenant', 'Token', 'Client', 'Target', 'Outcome', 'Detail'].map((c) => h('th', { scope: 'col' }, c)))), audit),
      auditPager);
    await Promise.all([loadTokens(), loadAudit(null)]);
  }

  // ---- Start -------------------------------------------------------------------------------

  async function start() {
    try {
      session = await api('/ui/session');
    } catch (e) {
      if (e.status !== 401) render(h('h1', {}, 'warden is not answering'), errorBox(e));
      return;
    }
    document.getElementById('who').textContent = session.tenant + ' · ' + session.scopes.join(', ');
    document.getElementById('nav-admin').hidden = !can('admin');
    const out = document.getElementById('signout');
    out.hidden = !session.csrf;
    out.addEventListener('click', async () => {
      await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin' });
      location.assign('/ui/login');
    });
    route();
  }

  start();
})();
