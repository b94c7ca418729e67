// Veneer dashboard: a marketer's view of one tenant's campaigns, experiments and segments,
// read from the admin API with the signed-in token. Everything is built with createElement and
// textContent: the page's CSP allows no inline script or style, and API data is never HTML.

const TOKEN_KEY = 'veneer-token';
const SVG_NS = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);
const view = $('view');
const signinPanel = $('signin-panel');
const state = { tenants: null };
// Bumped by every route and sign-out: an answer that arrives for a page no longer shown is dropped.
let gen = 0;

// ---------------------------------------------------------------- DOM helpers

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    el.setAttribute(k, v === true ? '' : String(v));
  }
}
const kids = (list) => list.flat(Infinity).filter((k) => k != null && k !== false);
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...kids(children)); // strings become text nodes: nothing is parsed as markup
  return el;
}
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...kids(children));
  return el;
}
function button(attrs, text, onClick) {
  const b = h('button', { type: 'button', ...attrs }, text);
  b.addEventListener('click', onClick);
  return b;
}
let uid = 0;
function section(title, attrs, ...children) {
  const id = `h-${++uid}`;
  return h('section', { 'aria-labelledby': id, ...attrs }, h('h2', { id }, title), ...children);
}
// Wide tables scroll inside a focusable region, so keyboard users can scroll them too.
function table(id, caption, head, rows) {
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', { id },
      h('caption', { class: 'sr-only' }, caption),
      h('thead', {}, h('tr', {}, head.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows)));
}
// replaceChildren, but nested arrays flattened and nulls dropped, as h() does.
const fill = (el, ...children) => el.replaceChildren(...kids(children));
const loading = (text = 'Loading…') => h('p', { class: 'loading' }, text);
const errorBox = (message) => h('p', { class: 'error', role: 'alert' }, message);
const badge = (text, cls = text) => h('span', { class: `badge ${cls.replace(/\s+/g, '-')}` }, text);
const clip = (text, n) => (text.length > n ? `${text.slice(0, Math.max(1, n - 1))}…` : text);

// ---------------------------------------------------------------- formatting

const NF = (o) => new Intl.NumberFormat(undefined, o);
const F = {
  int: NF({ maximumFractionDigits: 0 }),
  compact: NF({ notation: 'compact', maximumFractionDigits: 1 }),
  pct: NF({ style: 'percent', minimumFractionDigits: 1, maximumFractionDigits: 1 }),
  signed: NF({ style: 'percent', minimumFractionDigits: 1, maximumFractionDigits: 1, signDisplay: 'exceptZero' }),
  dec2: NF({ minimumFractionDigits: 2, maximumFractionDigits: 2 }),
  p: NF({ minimumFractionDigits: 4, maximumFractionDigits: 4 }),
};
// dateStyle cannot be combined with timeZoneName, hence the explicit fields.
const DTF = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', timeZoneName: 'short',
});
const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
const num = (f) => (x) => (isNum(x) ? f.format(x) : '—');
const int = num(F.int);
const pct = num(F.pct);
const signedPct = num(F.signed);
const pValue = (p) => (!isNum(p) ? '—' : p < 0.0001 ? `< ${F.p.format(0.0001)}` : F.p.format(p));
// "p = 0.0312", or "p < 0.0001" when it is tiny.
const pIs = (p) => { const t = pValue(p); return t.startsWith('<') ? `p ${t}` : `p = ${t}`; };
const interval = (ci) => (Array.isArray(ci) && isNum(ci[0]) && isNum(ci[1]) ? `[${signedPct(ci[0])}, ${signedPct(ci[1])}]` : '—');
function money(x, currency) {
  if (!isNum(x)) return '—';
  if (currency) {
    try { return NF({ style: 'currency', currency }).format(x); } catch { /* not an ISO 4217 code */ }
    return `${F.dec2.format(x)} ${currency}`;
  }
  return F.dec2.format(x);
}
function instant(text) {
  const t = Date.parse(text);
  const shown = Number.isNaN(t) ? String(text ?? '—') : DTF.format(t);
  return h('time', { datetime: text, title: text }, shown);
}
// Report days are UTC dates: format them in UTC so they do not shift by a day.
const dayLabel = (d) => {
  const t = Date.parse(`${d}T00:00:00Z`);
  return Number.isNaN(t) ? d : new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' }).format(t);
};
// gbstats' codes for a test that could not run, in words a marketer can act on.
const STATS_ERRORS = {
  ZERO_NEGATIVE_BASELINE_VARIATION: 'no conversions in the control yet',
  ZERO_NEGATIVE_VARIANCE: 'not enough variation in the data yet',
  NO_UNITS_IN_VARIATION: 'a variation has no users yet',
};
const statsError = (code) => STATS_ERRORS[code] ?? code;

// ---------------------------------------------------------------- API

class Unauthorized extends Error {}
const token = () => sessionStorage.getItem(TOKEN_KEY);
const enc = encodeURIComponent;
const tenantPath = (t, tail = '') => `/v1/tenants/${enc(t)}${tail}`;

async function api(path, { method = 'GET', body } = {}) {
  const headers = { Authorization: `Bearer ${token()}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    throw new Error(`Could not reach Veneer (${e.message}).`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* reported below */ }
  const message = (data && typeof data.error === 'string' && data.error) || `HTTP ${res.status} ${res.statusText}${text && !data ? `: ${text.slice(0, 200)}` : ''}`;
  if (res.status === 401) {
    signOut(`Signed out: ${message}. Sign in again.`);
    throw new Unauthorized(message);
  }
  if (!res.ok) throw new Error(message);
  if (data === null && text) throw new Error('The server did not answer with JSON.');
  return data;
}
const getRules = (t) => api(tenantPath(t.name, '/rules'));

// ---------------------------------------------------------------- routes

const hashFor = (tenant, tail = '', query = {}) => {
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v != null && v !== '')).toString();
  return `#/t/${enc(tenant)}${tail}${q ? `?${q}` : ''}`;
};
const safeDecode = (x) => { try { return decodeURIComponent(x); } catch { return x; } };

function parseRoute() {
  const raw = location.hash.replace(/^#/, '');
  const cut = raw.indexOf('?');
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const query = new URLSearchParams(cut < 0 ? '' : raw.slice(cut + 1));
  const [t, tenant, kind, id] = path.split('/').filter(Boolean).map(safeDecode);
  if (t !== 't' || !tenant) return { page: 'default', query };
  if (!kind) return { page: 'overview', tenant, query };
  if (kind === 'experiment' && id) return { page: 'experiment', tenant, id, query };
  if (kind === 'campaign' && id) return { page: 'campaign', tenant, id, query };
  if (kind === 'tester') return { page: 'tester', tenant, query };
  return { page: 'unknown', tenant, query };
}

// The API serializes the config's [[tenant.goal]] tables under "goal".
const goalsOf = (t) => t.goals ?? t.goal ?? [];
const goalKey = (t) => `veneer-goal:${t.name}`;
// The goal in the link wins, then the one chosen earlier in this tab, then the first.
function pickGoal(t, query) {
  const names = goalsOf(t).map((g) => g.name);
  const goal = [query.get('goal'), sessionStorage.getItem(goalKey(t))].find((g) => g && names.includes(g)) ?? names[0] ?? null;
  if (goal) sessionStorage.setItem(goalKey(t), goal);
  return goal;
}
const goalOf = (ctx) => goalsOf(ctx.tenant).find((g) => g.name === ctx.goal);

function syncHeader(tenant, page) {
  const select = $('tenant');
  if ([...select.options].some((o) => o.value === tenant)) select.value = tenant;
  for (const [id, tail, current] of [['nav-overview', '', page === 'overview'], ['nav-tester', '/tester', page === 'tester']]) {
    const a = $(id);
    a.href = tenant ? hashFor(tenant, tail) : '#/';
    if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

async function route(navigated = false) {
  if (!token() || !state.tenants) return;
  const my = ++gen;
  let r = parseRoute();
  if (r.page === 'default') {
    if (!state.tenants.length) {
      fill(view, h('h1', {}, 'No tenants'), h('p', {}, 'This token sees no tenant yet. An operator creates them with `veneer admin tenant create`.'));
      return;
    }
    history.replaceState(null, '', hashFor(state.tenants[0].name));
    r = parseRoute();
  }
  syncHeader(r.tenant, r.page);
  // A control that caused the navigation (goal, engine) gets its focus back once redrawn; a
  // followed link's focus moves to the new page; the header's tenant select keeps its own.
  const active = document.activeElement;
  const fromView = view.contains(active);
  const focusId = fromView ? active.id : '';
  const toView = navigated && (fromView || !active || active === document.body || !!active.closest?.('nav'));
  fill($('preview-result'));
  const tenant = state.tenants.find((t) => t.name === r.tenant);
  const ctx = { tenant, query: r.query, alive: () => my === gen && !!token() };
  if (!tenant) {
    fill(view, h('h1', {}, 'Tenant not found'),
      errorBox(`This token sees no tenant named “${r.tenant}”.`),
      state.tenants[0] ? h('p', {}, h('a', { href: hashFor(state.tenants[0].name) }, `Go to ${state.tenants[0].name}`)) : null);
    return;
  }
  ctx.goal = pickGoal(tenant, r.query);
  fill(view, loading());
  const pages = { overview: overviewPage, experiment: experimentPage, campaign: campaignPage, tester: testerPage };
  try {
    if (pages[r.page]) await pages[r.page](ctx, r.id);
    else fill(view, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: hashFor(tenant.name) }, 'Back to the overview')));
  } catch (e) {
    if (e instanceof Unauthorized || !ctx.alive()) return;
    fill(view, h('h1', {}, 'Something went wrong'), errorBox(e.message || String(e)));
  }
  if (!ctx.alive()) return;
  const again = focusId && $(focusId);
  if (again) again.focus();
  else if (toView) view.focus();
}

// ---------------------------------------------------------------- sign-in

function showSignin(message = '') {
  gen++;
  state.tenants = null;
  $('session').hidden = true;
  fill($('preview-result'));
  fill(view, signinPanel);
  $('signin-error').textContent = message;
  $('token').focus();
}
function signOut(message = '') {
  sessionStorage.clear();
  showSignin(message);
}
function enter(tenants) {
  state.tenants = tenants;
  $('session').hidden = false;
  $('tenant').replaceChildren(...tenants.map((t) => h('option', { value: t.name }, t.disabled ? `${t.name} (disabled)` : t.name)));
  route();
}
function boot() {
  // A shared link may carry the token in the fragment: keep it, then take it out of the
  // address bar (and so out of the history) at once.
  if (location.hash.startsWith('#token=')) {
    const value = safeDecode(location.hash.slice('#token='.length));
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    history.replaceState(null, '', `${location.pathname}${location.search}#/`);
  }
  if (!token()) { showSignin(); return; }
  const my = ++gen;
  $('session').hidden = false;
  fill(view, loading());
  api('/v1/tenants').then((tenants) => { if (my === gen) enter(tenants); }, (e) => {
    if (e instanceof Unauthorized || my !== gen) return;
    fill(view, h('h1', {}, 'Could not load the tenants'), errorBox(e.message), button({}, 'Try again', boot));
  });
}

$('signin').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('token');
  const error = $('signin-error');
  const submit = $('signin-submit');
  const value = input.value.trim();
  if (!value) { error.textContent = 'Enter a token.'; return; }
  error.textContent = '';
  submit.disabled = true;
  submit.textContent = 'Signing in…';
  try {
    const res = await fetch('/v1/tenants', { headers: { Authorization: `Bearer ${value}` }, cache: 'no-store' });
    const data = await res.json().catch(() => null);
    if (res.ok && Array.isArray(data)) {
      sessionStorage.setItem(TOKEN_KEY, value);
      input.value = '';
      enter(data);
      view.focus();
    } else {
      error.textContent = data?.error ?? `Sign-in failed (HTTP ${res.status}).`;
    }
  } catch (x) {
    error.textContent = `Could not reach Veneer: ${x.message}`;
  } finally {
    submit.disabled = false;
    submit.textContent = 'Sign in';
  }
});
// Until this script runs the button stays disabled, so the form is never sent natively.
$('signin-submit').disabled = false;
$('signout').addEventListener('click', () => signOut('You are signed out.'));
$('tenant').addEventListener('change', (e) => { location.hash = hashFor(e.target.value); });
$('skip').addEventListener('click', (e) => { e.preventDefault(); view.focus(); }); // "#view" is not a route
window.addEventListener('hashchange', () => (location.hash.startsWith('#token=') ? boot() : route(true)));

// ---------------------------------------------------------------- shared controls

function goalPicker(ctx, onChange) {
  const goals = goalsOf(ctx.tenant);
  const describe = (g) => `${g.name}${g.event ? ` (event “${g.event}”)` : g.path ? ` (page ${g.path})` : ''}`;
  const select = h('select', { id: 'goal', disabled: !goals.length },
    goals.length ? goals.map((g) => h('option', { value: g.name }, describe(g))) : h('option', { value: '' }, 'no goals defined'));
  select.value = ctx.goal ?? '';
  select.addEventListener('change', () => {
    ctx.goal = select.value;
    sessionStorage.setItem(goalKey(ctx.tenant), select.value);
    onChange(select.value);
  });
  return h('div', { class: 'field' }, h('label', { for: 'goal' }, 'Goal (what counts as a conversion)'), select);
}
const NO_GOALS = 'This tenant defines no goals, so there is nothing to report on: add a [[tenant.goal]] to its configuration.';

const variationName = (exp, i) => exp?.meta?.[i]?.name ?? exp?.meta?.[i]?.key ?? String(i);
// For buttons: the meta name, else the variation's own value (the report names it by index).
const variationLabel = (exp, i) => {
  if (exp?.meta?.[i]?.name ?? exp?.meta?.[i]?.key) return variationName(exp, i);
  const v = exp?.variations?.[i];
  return clip(typeof v === 'string' ? v : JSON.stringify(v) ?? String(i), 40);
};
const campaignStatus = (c, now = Date.now()) => {
  const [start, end] = [Date.parse(c.start), Date.parse(c.end)];
  // An instant this browser cannot read (an RFC 9557 zone suffix, say) is not a verdict.
  if (!Number.isFinite(start) || !Number.isFinite(end)) return 'unknown';
  return now < start ? 'scheduled' : now < end ? 'live' : 'ended';
};
const experimentHref = (t, key, goal, engine = 'bayesian') => hashFor(t.name, `/experiment/${enc(key)}`, { goal, engine });
const campaignHref = (t, id, goal) => hashFor(t.name, `/campaign/${enc(id)}`, { goal });

// Preview links open the site as a chosen visitor; the answer goes to the shared status area.
async function createPreview(tenant, body) {
  const out = $('preview-result');
  fill(out, h('p', {}, 'Creating a preview link…'));
  try {
    const p = await api(tenantPath(tenant, '/previews'), { method: 'POST', body });
    const href = p.url ?? p.path;
    if (typeof href !== 'string' || !/^(https?:\/\/|\/)/.test(href)) throw new Error('The preview answer holds no usable link.');
    const copy = button({ class: 'secondary', id: 'preview-copy' }, 'Copy', async () => {
      try { await navigator.clipboard.writeText(href); copy.textContent = 'Copied'; } catch { copy.textContent = 'Copy failed: select the link'; }
    });
    fill(out,
      h('p', {}, 'Preview link: ', h('a', { id: 'preview-link', href, target: '_blank', rel: 'noopener' }, href), copy),
      h('p', { class: 'note' }, 'Expires ', instant(p.expires_at),
        p.url ? '. Nothing is recorded while previewing.' : '. Open this path on the site’s own host; nothing is recorded while previewing.'));
  } catch (e) {
    if (!(e instanceof Unauthorized)) fill(out, h('p', { class: 'error' }, `Preview failed: ${e.message}`));
  }
}

// ---------------------------------------------------------------- chart helpers

function chartWidth() {
  const cs = getComputedStyle(view);
  const w = view.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  return Math.round(Math.min(1000, Math.max(300, w || 700)));
}
// 1, 2 or 5 times a power of ten: steps people read at a glance.
function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}
const chartSvg = (id, w, h0, attrs) => s('svg', { id, class: 'chart', viewBox: `0 0 ${w} ${h0}`, ...attrs });
const legend = (names) => h('ul', { class: 'legend' }, names.map((n, i) => h('li', {}, h('span', { class: `swatch s${i % 6}`, 'aria-hidden': 'true' }), n)));
function miniBar(value) {
  return s('svg', { class: 'mini', viewBox: '0 0 100 8', preserveAspectRatio: 'none', 'aria-hidden': 'true' },
    s('rect', { class: 'track', width: 100, height: 8, rx: 2 }), s('rect', { class: 'fill', width: Math.max(0, Math.min(1, value)) * 100, height: 8, rx: 2 }));
}

// Tick instants at day, week or month starts (local time), thinned to what fits.
function timeTicks(t0, t1, fit) {
  const day = 864e5;
  const span = t1 - t0;
  const d = new Date(t0);
  d.setHours(0, 0, 0, 0);
  let step = () => d.setDate(d.getDate() + 1);
  let opts = { month: 'short', day: 'numeric' };
  if (span > 120 * day) {
    d.setDate(1);
    step = () => d.setMonth(d.getMonth() + 1);
    opts = { month: 'short', year: 'numeric' };
  } else if (span > 20 * day) {
    step = () => d.setDate(d.getDate() + 7);
  }
  const ticks = [];
  for (let guard = 0; d.getTime() <= t1 && guard < 2000; guard++, step()) if (d.getTime() >= t0) ticks.push(d.getTime());
  const every = Math.ceil(ticks.length / Math.max(1, fit));
  const f = new Intl.DateTimeFormat(undefined, opts);
  return ticks.filter((_, i) => i % every === 0).map((t) => [t, f.format(t)]);
}

// Campaign timeline: one bar per campaign on a shared time axis that also includes now.
function timelineChart(t, campaigns, linkTo) {
  const rows = campaigns.filter((c) => Number.isFinite(Date.parse(c.start)) && Number.isFinite(Date.parse(c.end)));
  if (!rows.length) return null;
  const now = Date.now();
  const W = chartWidth();
  const labelW = Math.min(170, Math.round(W * 0.3));
  const rowH = 30;
  const top = 24;
  const bottom = top + rows.length * rowH;
  let t0 = Math.min(now, ...rows.map((c) => Date.parse(c.start)));
  let t1 = Math.max(now, ...rows.map((c) => Date.parse(c.end)));
  const pad = (t1 - t0) * 0.03 || 864e5;
  t0 -= pad; t1 += pad;
  const x = (v) => labelW + ((v - t0) / (t1 - t0)) * (W - labelW - 12);
  const el = chartSvg('timeline', W, bottom + 28, { role: 'group', 'aria-label': 'Campaign timeline' });
  for (const [tick, label] of timeTicks(t0, t1, Math.floor((W - labelW) / 80))) {
    el.append(s('line', { class: 'grid', x1: x(tick), x2: x(tick), y1: top, y2: bottom }),
      s('text', { class: 'tick', x: x(tick), y: bottom + 18, 'text-anchor': 'middle' }, label));
  }
  rows.forEach((c, i) => {
    const y = top + i * rowH;
    const start = Date.parse(c.start);
    const end = Date.parse(c.end);
    const status = campaignStatus(c, now);
    const name = c.name || c.id;
    const summary = `${name}: ${status}, ${DTF.format(start)} to ${DTF.format(end)}`;
    el.append(s('text', { class: 'label', x: 0, y: y + rowH / 2 + 4 }, clip(name, Math.floor(labelW / 7.5))),
      linkTo(s('a', { 'aria-label': summary },
        s('rect', { class: `bar ${status}`, 'data-campaign': c.id, x: x(start), y: y + 6, width: Math.max(3, x(end) - x(start)), height: rowH - 12, rx: 3 },
          s('title', {}, summary))), (g) => campaignHref(t, c.id, g)));
  });
  el.append(s('line', { class: 'now', x1: x(now), x2: x(now), y1: top - 6, y2: bottom }),
    s('text', { class: 'now-label', x: x(now), y: top - 10, 'text-anchor': 'middle' }, 'now'));
  return el;
}

// Small multiples over the same days, one panel per measure with its own scale: conversions
// are a small fraction of users or impressions and would lie flat on a shared one.
function panelChart({ id, label, days, panels, bars = false }) {
  const W = chartWidth();
  const left = 48;
  const right = 10;
  const ph = 120;
  const gap = 56;
  const n = days.length;
  const band = (W - left - right) / Math.max(1, n);
  const every = Math.ceil(n / Math.max(1, Math.floor((W - left) / 64)));
  const el = chartSvg(id, W, panels.length * (ph + gap), { role: 'img', 'aria-label': label });
  panels.forEach((p, pi) => {
    const top = pi * (ph + gap) + 24;
    const base = top + ph;
    const max = Math.max(0, ...p.series.flatMap((x) => x.values));
    const step = Math.max(1, niceStep(max / 4));
    const ymax = Math.max(step, Math.ceil(max / step) * step);
    const y = (v) => base - (v / ymax) * ph;
    el.append(s('text', { class: 'panel-title', x: 0, y: top - 10 }, p.title));
    for (let v = 0; v <= ymax; v += step) {
      el.append(s('line', { class: 'grid', x1: left, x2: W - right, y1: y(v), y2: y(v) }),
        s('text', { class: 'tick', x: left - 6, y: y(v) + 4, 'text-anchor': 'end' }, F.compact.format(v)));
    }
    days.forEach((d, i) => {
      if (i % every === 0) el.append(s('text', { class: 'tick', x: left + band * (i + 0.5), y: base + 16, 'text-anchor': 'middle' }, dayLabel(d)));
    });
    p.series.forEach((ser, k) => {
      const cls = `s${ser.color % 6}`;
      if (bars) {
        const w = Math.min(48, (band * 0.7) / p.series.length);
        el.append(s('g', { class: cls, ...ser.attrs }, ser.values.map((v, i) => s('rect', {
          class: 'bar-fill', x: left + band * (i + 0.5) + (k - p.series.length / 2) * w, y: y(v), width: Math.max(1, w - 1), height: base - y(v),
        }, s('title', {}, `${dayLabel(days[i])}: ${int(v)}`)))));
      } else {
        const pts = ser.values.map((v, i) => [left + band * (i + 0.5), y(v)]);
        el.append(s('path', { class: `line ${cls}`, d: pts.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join(''), ...ser.attrs }));
        // A single day draws no line: the dots keep it visible.
        if (n <= 14) el.append(...pts.map(([px, py]) => s('circle', { class: `dot ${cls}`, cx: px, cy: py, r: 3.5 })));
      }
    });
  });
  return el;
}

// Relative uplift with its 95 % interval per variation, against a zero line.
function upliftChart(rows) {
  const W = chartWidth();
  const labelW = Math.min(160, Math.round(W * 0.3));
  const rowH = 36;
  const top = 8;
  const bottom = top + rows.length * rowH;
  const ok = (r) => r && !r.error_message && isNum(r.expected) && isNum(r.ci?.[0]) && isNum(r.ci?.[1]);
  const usable = rows.filter((x) => ok(x.r));
  let lo = Math.min(0, ...usable.flatMap((x) => [x.r.ci[0], x.r.expected]));
  let hi = Math.max(0, ...usable.flatMap((x) => [x.r.ci[1], x.r.expected]));
  if (hi - lo < 1e-9) { lo = -0.1; hi = 0.1; }
  const step = niceStep((hi - lo) / Math.max(2, Math.floor((W - labelW) / 90)));
  lo = Math.floor(lo / step) * step;
  hi = Math.ceil(hi / step) * step;
  const x = (v) => labelW + ((v - lo) / (hi - lo)) * (W - labelW - 16);
  const axisFmt = NF({ style: 'percent', maximumFractionDigits: step < 0.01 ? 1 : 0, signDisplay: 'exceptZero' });
  const el = chartSvg('uplift-chart', W, bottom + 30, { role: 'img', 'aria-label': 'Uplift in conversion rate against the control, with 95 % intervals' });
  for (let k = 0; lo + k * step <= hi + step / 2; k++) {
    const v = Math.abs(lo + k * step) < 1e-12 ? 0 : lo + k * step;
    el.append(s('line', { class: 'grid', x1: x(v), x2: x(v), y1: top, y2: bottom }),
      s('text', { class: 'tick', x: x(v), y: bottom + 18, 'text-anchor': 'middle' }, axisFmt.format(v)));
  }
  el.append(s('line', { class: 'zero', x1: x(0), x2: x(0), y1: top - 4, y2: bottom }));
  rows.forEach(({ i, name, r }, k) => {
    const y = top + k * rowH + rowH / 2;
    const verdict = !ok(r) ? 'unclear' : r.ci[0] > 0 ? 'better' : r.ci[1] < 0 ? 'worse' : 'unclear';
    const g = s('g', { 'data-variation': i, class: verdict }, s('text', { class: 'label', x: 0, y: y + 4 }, clip(`${i} · ${name}`, Math.floor(labelW / 7.5))));
    if (ok(r)) {
      g.append(s('line', { class: 'interval', x1: x(r.ci[0]), x2: x(r.ci[1]), y1: y, y2: y }),
        s('circle', { class: 'point', cx: x(r.expected), cy: y, r: 6 }),
        s('title', {}, `${name}: ${signedPct(r.expected)} ${interval(r.ci)}`));
    } else {
      g.append(s('text', { class: 'tick', x: labelW, y: y + 4 }, r?.error_message ? `n/a: ${statsError(r.error_message)}` : 'no estimate'));
    }
    el.append(g);
  });
  return el;
}

// ---------------------------------------------------------------- overview

async function overviewPage(ctx) {
  const t = ctx.tenant;
  let goal = ctx.goal;
  // Report links follow the goal select without redrawing the page.
  const links = [];
  const reportLink = (hrefOf, ...text) => {
    const a = h('a', {}, ...text);
    const set = () => { a.href = hrefOf(goal); };
    set();
    links.push(set);
    return a;
  };
  // The timeline's links are SVG anchors, whose href is an attribute.
  const svgLink = (a, hrefOf) => {
    const set = () => a.setAttribute('href', hrefOf(goal));
    set();
    links.push(set);
    return a;
  };
  const picker = goalPicker(ctx, (g) => {
    goal = g;
    history.replaceState(null, '', hashFor(t.name, '', { goal: g }));
    links.forEach((set) => set());
  });
  const campaignsBox = h('div', {}, loading());
  const experimentsBox = h('div', {}, loading());
  const segmentsBox = h('div', {}, loading());
  fill(view,
    h('h1', {}, t.name, ' ', t.disabled ? badge('disabled') : null),
    h('p', { class: 'muted' }, (t.hosts ?? []).length ? `Serves ${t.hosts.join(', ')}` : 'No hosts configured'),
    h('div', { class: 'controls' }, picker),
    goalsOf(t).length ? null : h('p', { class: 'warning' }, NO_GOALS),
    section('Campaigns', { id: 'campaigns-section' }, campaignsBox),
    section('Experiments', { id: 'experiments-section' }, experimentsBox),
    section('Segment sizes', { id: 'segments-section' }, segmentsBox));

  const [rulesR, sizesR] = await Promise.allSettled([getRules(t), api(tenantPath(t.name, '/reports/segments'))]);
  if (!ctx.alive()) return;
  if (rulesR.status === 'rejected') {
    const msg = `The rules could not be loaded: ${rulesR.reason.message}`;
    for (const box of [campaignsBox, experimentsBox, segmentsBox]) fill(box, errorBox(msg));
    return;
  }
  const rules = rulesR.value ?? {};

  const campaigns = [...(rules.campaigns ?? [])].sort((a, b) => Date.parse(a.start) - Date.parse(b.start));
  if (!campaigns.length) {
    fill(campaignsBox, h('p', {}, 'No campaigns in the rules.'));
  } else {
    const now = Date.now();
    fill(campaignsBox,
      h('p', { class: 'note' }, 'Times are shown in your time zone. A campaign is live from its start up to (not including) its end.'),
      timelineChart(t, campaigns, svgLink),
      table('campaigns', 'Campaigns', ['Campaign', 'Status', 'Starts', 'Ends', 'Audience', 'Channels', 'Priority'],
        campaigns.map((c) => {
          const status = campaignStatus(c, now);
          return h('tr', { 'data-campaign': c.id, 'data-status': status },
            h('th', { scope: 'row' }, reportLink((g) => campaignHref(t, c.id, g), c.name || c.id), c.name ? h('div', { class: 'note' }, c.id) : null),
            h('td', {}, badge(status)),
            h('td', {}, instant(c.start)),
            h('td', {}, instant(c.end)),
            h('td', {}, c.segments?.length ? c.segments.join(', ') : 'everyone'),
            h('td', {}, c.channels?.length ? c.channels.join(', ') : 'all'),
            h('td', { class: 'num' }, int(c.priority ?? 0)));
        })));
  }

  const experiments = rules.experiments ?? [];
  fill(experimentsBox, experiments.length
    ? table('experiments', 'Experiments', ['Experiment', 'Variations', 'Weights', 'Status'], experiments.map((e) => {
      const status = typeof e.status === 'string' ? e.status : e.active === false ? 'inactive' : 'running';
      const variations = e.variations ?? [];
      return h('tr', { 'data-experiment': e.key },
        h('th', { scope: 'row' }, reportLink((g) => experimentHref(t, e.key, g), e.key)),
        h('td', {}, h('ol', { start: 0 }, variations.map((v, i) => h('li', {}, variationName(e, i),
          h('span', { class: 'muted' }, `: ${clip(typeof v === 'string' ? v : JSON.stringify(v), 60)}`))))),
        h('td', {}, Array.isArray(e.weights) ? e.weights.map((w) => pct(w)).join(' / ') : 'equal split',
          isNum(e.coverage) && e.coverage < 1 ? h('div', { class: 'note' }, `coverage ${pct(e.coverage)}`) : null),
        h('td', {}, badge(status)));
    }))
    : h('p', {}, 'No experiments in the rules.'));

  const segmentNames = Object.keys(rules.segments ?? {});
  const sizes = sizesR.status === 'fulfilled' ? sizesR.value : null;
  const byName = new Map((sizes?.segments ?? []).map((x) => [x.segment, x]));
  fill(segmentsBox,
    sizes
      ? h('p', { class: 'note' }, `Counts only visitors seen in experiments (${int(sizes.exposed_visitors)} so far), by the segments they were in when first exposed. Visitors who never entered an experiment are not counted.`)
      : errorBox(`Segment sizes are unavailable: ${sizesR.reason.message}`),
    segmentNames.length
      ? table('segments', 'Segment sizes', ['Segment', 'Condition', 'Visitors', 'Share of exposed'], segmentNames.map((name) => {
        // As the report has them: a segment the report does not list (rules changed since the
        // page loaded) shows as unknown, not as zero.
        const visitors = byName.get(name)?.visitors ?? null;
        const share = byName.get(name)?.share ?? null;
        return h('tr', { 'data-segment': name },
          h('th', { scope: 'row' }, name),
          h('td', {}, h('code', {}, clip(JSON.stringify(rules.segments[name]), 120))),
          h('td', { class: 'num', 'data-field': 'visitors', 'data-value': visitors }, visitors == null ? '—' : int(visitors)),
          h('td', { class: 'num', 'data-field': 'share', 'data-value': share }, pct(share)));
      }))
      : h('p', {}, 'No segments in the rules.'));
}

// ---------------------------------------------------------------- experiment

// A number cell: the text is for people, data-value keeps the API's exact number.
const numCell = (field, value, text, attrs = {}) =>
  h('td', { class: 'num', 'data-field': field, 'data-value': isNum(value) ? String(value) : null, ...attrs }, text);

async function experimentPage(ctx, key) {
  const t = ctx.tenant;
  const engine = ctx.query.get('engine') === 'frequentist' ? 'frequentist' : 'bayesian';
  const go = (goal, eng) => { location.hash = experimentHref(t, key, goal, eng); };
  const engineSelect = h('select', { id: 'engine' },
    h('option', { value: 'bayesian' }, 'Bayesian'),
    h('option', { value: 'frequentist' }, 'Frequentist'));
  engineSelect.value = engine;
  engineSelect.addEventListener('change', () => go(ctx.goal, engineSelect.value));
  const body = h('div', {}, loading());
  const previews = h('div', {}, loading());
  fill(view,
    h('p', { class: 'crumbs' }, h('a', { href: hashFor(t.name) }, `← ${t.name} overview`)),
    h('h1', {}, 'Experiment ', h('code', {}, key)),
    h('div', { class: 'controls' }, goalPicker(ctx, (g) => go(g, engine)),
      h('div', { class: 'field' }, h('label', { for: 'engine' }, 'Statistics engine'), engineSelect)),
    body,
    section('Preview', { id: 'previews' }, previews));

  const reportPath = tenantPath(t.name, `/reports/experiments/${enc(key)}?${new URLSearchParams({ goal: ctx.goal ?? '', engine })}`);
  const [rulesR, reportR] = await Promise.allSettled([getRules(t), ctx.goal ? api(reportPath) : Promise.reject(new Error(NO_GOALS))]);
  if (!ctx.alive()) return;
  const report = reportR.status === 'fulfilled' ? reportR.value : null;
  fill(body, report ? experimentReport(report, engine, goalOf(ctx)?.currency) : errorBox(`The report could not be computed: ${reportR.reason.message}`));

  // Preview buttons come from the rules, so they work even when the report cannot be computed.
  const exp = rulesR.status === 'fulfilled' ? (rulesR.value?.experiments ?? []).find((e) => e.key === key) : null;
  const names = exp ? (exp.variations ?? []).map((_, i) => variationLabel(exp, i)) : (report?.variations ?? []).map((v) => v.name);
  fill(previews, names.length
    ? [h('p', {}, 'Open the site’s home page as a visitor forced into one variation. Previews are never recorded.'),
      h('div', { class: 'buttons' }, names.map((name, i) => button({ 'data-preview-variation': i }, `Preview ${i} · ${name}`,
        () => createPreview(t.name, { variations: { [key]: i }, path: '/' }))))]
    : errorBox(rulesR.status === 'rejected' ? `The rules could not be loaded: ${rulesR.reason.message}` : `The rules have no experiment “${key}”.`));
}

function experimentReport(r, engine, currency) {
  const variations = r.variations ?? [];
  const names = variations.map((v) => v.name);
  // The statistics hold one entry per variation after the control (index i − 1), or an error.
  const cr = Array.isArray(r.conversion_rate) ? r.conversion_rate : [];
  const vpu = Array.isArray(r.value_per_user) ? r.value_per_user : [];
  const crError = !Array.isArray(r.conversion_rate) && r.conversion_rate?.error;
  const ciName = engine === 'bayesian' ? '95 % credible interval' : '95 % confidence interval';

  const rows = variations.map((v, i) => {
    const res = i ? cr[i - 1] : null;
    const vres = i ? vpu[i - 1] : null;
    const failed = res?.error_message;
    return h('tr', { 'data-variation': i },
      h('th', { scope: 'row' }, `${v.variation ?? i} · ${v.name}`),
      numCell('users', v.users, int(v.users)),
      numCell('conversions', v.conversions, int(v.conversions)),
      numCell('rate', v.rate, pct(v.rate)),
      i ? numCell('uplift', res?.expected, failed ? `n/a (${statsError(failed)})` : signedPct(res?.expected))
        : h('td', { 'data-field': 'uplift' }, 'control'),
      h('td', { class: 'num', 'data-field': 'ci', 'data-low': isNum(res?.ci?.[0]) ? res.ci[0] : null, 'data-high': isNum(res?.ci?.[1]) ? res.ci[1] : null },
        i && !failed ? interval(res?.ci) : '—'),
      // With an error the engines fill in neutral values (a chance of 50 %, p = 1): not results.
      i && !failed ? numCell('chance_to_win', res?.chance_to_win, pct(res?.chance_to_win), {}) : h('td', { 'data-field': 'chance_to_win' }, i ? 'n/a' : '—'),
      i && !failed ? numCell('p_value', res?.p_value, pValue(res?.p_value)) : h('td', { 'data-field': 'p_value' }, i ? 'n/a' : '—'),
      numCell('value_per_user', v.value_per_user, money(v.value_per_user, currency)),
      i && !vres?.error_message ? numCell('value_uplift', vres?.expected, signedPct(vres?.expected))
        : i ? h('td', { 'data-field': 'value_uplift' }, 'n/a')
        : h('td', { 'data-field': 'value_uplift' }, 'control'));
  });
  // The chance to beat the control, drawn as a bar beside its number.
  rows.forEach((tr, i) => {
    const c = i && !cr[i - 1]?.error_message ? cr[i - 1]?.chance_to_win : null;
    if (isNum(c)) tr.querySelector('[data-field="chance_to_win"]').append(miniBar(c));
  });

  const nonControl = variations.slice(1).map((v, k) => ({ i: k + 1, name: v.name, r: cr[k] }));
  const days = [...(r.by_day ?? [])].sort((a, b) => (a.day < b.day ? -1 : a.day > b.day ? 1 : 0));
  const running = (field) => variations.map((_, i) => { let sum = 0; return days.map((d) => (sum += d.variations?.[i]?.[field] ?? 0)); });
  const series = (field) => running(field).map((values, i) => ({ values, color: i, attrs: { 'data-variation': i, 'data-series': field } }));
  const segments = r.by_segment ?? [];

  return [
    h('p', { class: 'muted' }, `Goal ${r.goal} · ${r.engine ?? engine} engine · sample ratio ${pIs(r.srm_p)} · bots excluded: ${int(r.bots_excluded ?? 0)}`),
    r.srm_warning ? h('p', { id: 'srm-warning', class: 'warning', role: 'alert' },
      `Sample ratio mismatch (${pIs(r.srm_p)}): the traffic split differs from the experiment’s weights. Do not trust these results until the cause is found.`) : null,
    crError ? errorBox(`Statistics unavailable: ${crError}`) : null,
    section('Results', {},
      table('experiment-table', 'Results by variation', ['Variation', 'Users', 'Conversions', 'Conversion rate', 'Uplift', ciName,
        'Chance to beat control', 'p-value', 'Value per user', 'Value per user uplift'], rows),
      h('p', { class: 'note' }, 'Uplift is relative to the control’s conversion rate (+10 % means 10 % more conversions per user). Both the chance to beat the control (Bayesian) and the p-value (frequentist) are shown; the interval comes from the selected engine.')),
    section('Uplift in conversion rate', {},
      nonControl.length ? upliftChart(nonControl) : h('p', {}, 'No variation to compare with the control.'),
      h('p', { class: 'note' }, `Dot: estimated uplift; bar: its ${ciName}. Green when the whole interval is above zero, red when below, grey while it still spans zero.`)),
    section('Users and conversions over time', {},
      days.length ? [panelChart({
        id: 'cumulative-chart', label: 'Cumulative users and conversions by exposure day, per variation', days: days.map((d) => d.day),
        panels: [{ title: 'Users (cumulative)', series: series('users') }, { title: 'Conversions (cumulative)', series: series('conversions') }],
      }), legend(names.map((n, i) => `${i} · ${n}`)), h('p', { class: 'note' }, 'By exposure day (UTC).'),
      // The same figures as a table, for screen readers and for anyone who cannot tell the
      // lines apart.
      h('details', {}, h('summary', {}, 'Figures by day'),
        table('cumulative-table', 'Cumulative users and conversions by day', ['Day', ...names.map((n) => `Users · ${n}`), ...names.map((n) => `Conversions · ${n}`)],
          days.map((d, k) => h('tr', {}, h('th', { scope: 'row' }, d.day),
            running('users').map((v) => h('td', { class: 'num' }, int(v[k]))),
            running('conversions').map((v) => h('td', { class: 'num' }, int(v[k])))))))]
        : h('p', {}, 'No exposures recorded yet.')),
    section('By segment', {},
      segments.length ? table('by-segment', 'Results by segment at exposure',
        ['Segment', ...names.map((n) => `Users · ${n}`), ...names.map((n) => `Rate · ${n}`), ...names.slice(1).map((n) => `Uplift · ${n}`)],
        segments.map((g) => {
          const gcr = Array.isArray(g.conversion_rate) ? g.conversion_rate : [];
          return h('tr', { 'data-segment': g.segment },
            h('th', { scope: 'row' }, g.segment),
            names.map((_, i) => numCell('users', g.variations?.[i]?.users, int(g.variations?.[i]?.users), { 'data-variation': i })),
            names.map((_, i) => numCell('rate', g.variations?.[i]?.rate, pct(g.variations?.[i]?.rate), { 'data-variation': i })),
            names.slice(1).map((_, k) => numCell('uplift', gcr[k]?.expected,
              gcr[k]?.error_message ? 'n/a' : `${signedPct(gcr[k]?.expected)} ${interval(gcr[k]?.ci)}`, { 'data-variation': k + 1 })));
        }))
        : h('p', {}, 'No segment data yet.'),
      h('p', { class: 'note' }, 'Visitors are counted in every segment they were in when first exposed.')),
  ];
}

// ---------------------------------------------------------------- campaign

async function campaignPage(ctx, id) {
  const t = ctx.tenant;
  const body = h('div', {}, loading());
  const previewBox = h('div', {}, loading());
  fill(view,
    h('p', { class: 'crumbs' }, h('a', { href: hashFor(t.name) }, `← ${t.name} overview`)),
    h('h1', {}, 'Campaign ', h('code', {}, id)),
    h('div', { class: 'controls' }, goalPicker(ctx, (g) => { location.hash = campaignHref(t, id, g); })),
    body,
    section('Preview', {}, previewBox));
  const reportPath = tenantPath(t.name, `/reports/campaigns/${enc(id)}?${new URLSearchParams({ goal: ctx.goal ?? '' })}`);
  const [rulesR, reportR] = await Promise.allSettled([getRules(t), ctx.goal ? api(reportPath) : Promise.reject(new Error(NO_GOALS))]);
  if (!ctx.alive()) return;
  const report = reportR.status === 'fulfilled' ? reportR.value : null;
  const rule = rulesR.status === 'fulfilled' ? (rulesR.value?.campaigns ?? []).find((c) => c.id === id) : null;
  const c = rule ?? (report && { id, name: report.name, start: report.start, end: report.end, channels: report.channels });
  if (c?.name) view.querySelector('h1').replaceChildren(c.name, ' ', h('code', {}, id));

  fill(body,
    c ? h('dl', { class: 'facts' },
      h('dt', {}, 'Status'), h('dd', {}, badge(campaignStatus(c))),
      h('dt', {}, 'Live'), h('dd', {}, instant(c.start), ' → ', instant(c.end), ' (end not included)'),
      h('dt', {}, 'Audience'), h('dd', {}, c.segments?.length ? c.segments.join(', ') : 'everyone'),
      h('dt', {}, 'Channels'), h('dd', {}, c.channels?.length ? c.channels.join(', ') : 'all'),
      report ? [h('dt', {}, 'Attribution'), h('dd', {}, `conversions within ${report.attribution_days} days of an impression`)] : null) : null,
    report ? campaignReport(report) : errorBox(`The report could not be computed: ${reportR.reason.message}`));

  if (!c) {
    fill(previewBox, errorBox(rulesR.status === 'rejected' ? `The rules could not be loaded: ${rulesR.reason.message}` : `The rules have no campaign “${id}”.`));
    return;
  }
  // Preview at an instant the campaign is live: now if it is running, else its start.
  const now = Date.now();
  const at = now < Date.parse(c.end) && now > Date.parse(c.start) ? new Date(now).toISOString() : c.start;
  const previewBody = { at, path: '/' };
  if (c.segments?.length) previewBody.segments = c.segments;
  fill(previewBox,
    h('p', {}, 'Open the site’s home page at ', instant(at), c.segments?.length ? ` as a visitor in ${c.segments.join(', ')}` : '', '. Previews are never recorded.'),
    button({ id: 'preview-campaign' }, 'Preview', () => createPreview(t.name, previewBody)));
}

function campaignReport(r) {
  const cur = r.currency;
  const figures = [
    ['impressions', 'Impressions', r.impressions, int],
    ['reach', 'Reach (visitors)', r.reach, int],
    ['conversions', 'Conversions', r.conversions, int],
    ['conversion_rate', 'Conversion rate (of reach)', r.conversion_rate, pct],
    ['value', 'Value', r.value, (v) => money(v, cur)],
    ['value_per_user', 'Value per visitor reached', r.value_per_user, (v) => money(v, cur)],
    ['cost', 'Cost', r.cost, (v) => (isNum(v) ? money(v, cur) : 'not set')],
    ['roi', 'Return on investment', r.roi, (v) => (isNum(v) ? signedPct(v) : '— (needs a cost)')],
  ];
  const days = r.by_day ?? [];
  const h0 = r.holdout;
  return [
    h('dl', { class: 'figures', id: 'campaign-figures' },
      figures.map(([field, label, value, f]) => h('div', {}, h('dt', {}, label), h('dd', { 'data-field': field, 'data-value': isNum(value) ? String(value) : null }, f(value)))),
      h('div', {}, h('dt', {}, 'Currency'), h('dd', { 'data-field': 'currency' }, cur || 'none set'))),
    h('p', { class: 'note' }, `Goal ${r.goal}. Return on investment is (value − cost) ÷ cost. Bots left out: ${int(r.bots_excluded ?? 0)} impressions.`),
    section('By day', {},
      days.length ? [panelChart({
        id: 'campaign-by-day', label: 'Impressions and conversions per day', days: days.map((d) => d.key), bars: true,
        panels: [
          { title: 'Impressions', series: [{ values: days.map((d) => d.impressions ?? 0), color: 1, attrs: { 'data-series': 'impressions' } }] },
          { title: 'Conversions', series: [{ values: days.map((d) => d.conversions ?? 0), color: 3, attrs: { 'data-series': 'conversions' } }] },
        ],
      }), h('p', { class: 'note' }, 'By UTC day: impressions on the day shown, conversions on the day they happened.'),
      h('details', {}, h('summary', {}, 'Figures by day'), breakdownTable('by-day', 'Figures by day', 'Day', days, cur))]
        : h('p', {}, 'No impressions recorded yet.')),
    section('By channel', {},
      (r.by_channel ?? []).length ? breakdownTable('by-channel', 'Figures by channel', 'Channel', r.by_channel, cur, true) : h('p', {}, 'No impressions recorded yet.'),
      h('p', { class: 'note' }, 'A conversion counts for the channel of the visitor’s latest impression before it. E-mail opens count people and Gmail’s proxy (not Apple’s privacy proxy, prefetches or scanners); clicks are the surer signal.')),
    h0 ? holdoutSection(h0, cur) : null,
  ];
}

// `signals`: the channel breakdown also shows e-mail opens and clicks.
function breakdownTable(id, caption, first, rows, cur, signals = false) {
  const heads = [first, 'Impressions', 'Reach', 'Conversions', 'Value'].concat(signals ? ['Opens', 'Clicks'] : []);
  return table(id, caption, heads, rows.map((x) => h('tr', { 'data-key': x.key },
    h('th', { scope: 'row' }, x.key),
    numCell('impressions', x.impressions, int(x.impressions)),
    numCell('reach', x.reach, int(x.reach)),
    numCell('conversions', x.conversions, int(x.conversions)),
    numCell('value', x.value, money(x.value, cur)),
    signals ? numCell('opens', x.opens ?? 0, int(x.opens ?? 0)) : null,
    signals ? numCell('clicks', x.clicks ?? 0, int(x.clicks ?? 0)) : null)));
}

// The holdout compares visitors shown the campaign with those held out: its own uplift.
function holdoutSection(ho, cur) {
  const res = Array.isArray(ho.conversion_rate) ? ho.conversion_rate[0] : null;
  return section('Holdout: the campaign’s own effect', { id: 'holdout' },
    h('p', {}, `${pct(ho.share)} of eligible visitors were not shown the campaign, as its control group.`),
    ho.srm_warning ? h('p', { class: 'warning', role: 'alert' }, `Sample ratio mismatch (${pIs(ho.srm_p)}): the groups are not the sizes the holdout share implies.`) : null,
    table('holdout-table', 'Held out and shown visitors', ['Group', 'Users', 'Conversions', 'Conversion rate', 'Value per user'],
      (ho.groups ?? []).map((g, i) => h('tr', { 'data-variation': i },
        h('th', { scope: 'row' }, g.name),
        numCell('users', g.users, int(g.users)),
        numCell('conversions', g.conversions, int(g.conversions)),
        numCell('rate', g.rate, pct(g.rate)),
        numCell('value_per_user', g.value_per_user, money(g.value_per_user, cur))))),
    res ? h('p', { 'data-field': 'holdout-uplift', 'data-value': isNum(res.expected) ? String(res.expected) : null },
      res.error_message ? `Uplift from showing it: n/a (${statsError(res.error_message)}).`
        : `Uplift in conversion rate from showing it: ${signedPct(res.expected)} ${interval(res.ci)}, chance it helps ${pct(res.chance_to_win)}.`)
      : errorBox(`Statistics unavailable: ${ho.conversion_rate?.error ?? 'no answer'}`));
}

// ---------------------------------------------------------------- segment tester

// Every attribute the edge derives for a request (visitor.rs), so rules over any of them can
// be tried; the edge computes returning and language from visitCount and locale.
const EXAMPLE_VISITOR = {
  id: 'visitor-1', visitCount: 2, returning: true, device: 'mobile', country: 'NO',
  locale: 'nb-NO', language: 'nb', utm: { source: 'newsletter' }, referrer: null,
  path: '/', host: null, userAgent: null,
  consent: { analytics: true, personalization: true, marketing: true },
};
// The rules engine (WebAssembly) is fetched the first time the tester opens, and only once.
// The wasm's URL is passed explicitly: glue generated through wasm-bindgen's library (build.rs)
// has no default path, and a bare init() would instantiate `undefined`.
let enginePromise = null;
function loadEngine() {
  enginePromise ??= import('./rules_web.js').then(async (m) => {
    await m.default({ module_or_path: new URL('./rules_web_bg.wasm', import.meta.url) });
    return m;
  });
  enginePromise.catch(() => { enginePromise = null; }); // a later visit tries again
  return enginePromise;
}

async function testerPage(ctx) {
  const t = ctx.tenant;
  const attributes = h('textarea', { id: 'attributes', spellcheck: 'false', 'aria-describedby': 'attributes-hint' });
  attributes.value = JSON.stringify(EXAMPLE_VISITOR, null, 2);
  const at = h('input', { id: 'at', type: 'text', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'at-hint' });
  at.value = new Date().toISOString();
  // The channels this tenant's requests can have: its default and its channel rules' names,
  // and any a campaign names.
  const channelOptions = (names) => [...new Set(names)].map((c) => h('option', { value: c }, c));
  const tenantChannels = [t.channel ?? 'web', ...(t.channel_rule ?? []).map((r) => r.name)];
  const channel = h('select', { id: 'channel' }, channelOptions(tenantChannels));
  const evaluateBtn = h('button', { type: 'submit', id: 'evaluate', disabled: true }, 'Evaluate');
  const error = h('div', { id: 'tester-error', role: 'alert' });
  const showError = (message) => { fill(error, h('p', { class: 'error' }, message)); fill(result); };
  const result = h('div', { id: 'tester-result', 'aria-live': 'polite' });
  const status = h('p', { class: 'loading' }, 'Loading…');
  const form = h('form', { class: 'tester-form', id: 'tester-form' },
    h('div', { class: 'field' }, h('label', { for: 'attributes' }, 'Visitor attributes (JSON)'), attributes,
      h('p', { class: 'note', id: 'attributes-hint' }, 'The attributes the edge knows about a visitor: id, visitCount, returning, firstSeen, device, country, locale, language, utm.*, referrer, path, host, userAgent, consent.*. Ctrl+Enter evaluates.')),
    h('div', { class: 'row' },
      h('div', { class: 'field' }, h('label', { for: 'at' }, 'At (instant)'), at,
        h('span', { class: 'note', id: 'at-hint' }, 'RFC 3339, e.g. 2026-12-24T18:00:00+01:00')),
      button({ class: 'secondary', id: 'at-now' }, 'Now', () => { at.value = new Date().toISOString(); }),
      h('div', { class: 'field' }, h('label', { for: 'channel' }, 'Channel'), channel),
      evaluateBtn));
  fill(view,
    h('h1', {}, 'Segment tester'),
    h('p', {}, `Try ${t.name}’s current rules on a visitor you describe: which segments match, which variation of each experiment a new visitor with that id gets, and which campaigns are live. Your browser runs the edge’s own rules engine; nothing is sent or recorded.`),
    form, status, error, result);
  // Bound now, so Enter in a field never submits the form natively while the engine loads.
  let run = () => {};
  form.addEventListener('submit', (e) => { e.preventDefault(); run(); });
  attributes.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });

  const [rulesR, engineR] = await Promise.allSettled([getRules(t), loadEngine()]);
  if (!ctx.alive()) return;
  status.remove();
  if (rulesR.status === 'rejected') { showError(`The rules could not be loaded: ${rulesR.reason.message}`); return; }
  if (engineR.status === 'rejected') { showError(`The rules engine could not be loaded: ${engineR.reason.message}`); return; }
  const rules = rulesR.value ?? {};
  const engine = engineR.value;
  const chosen = channel.value;
  channel.replaceChildren(...channelOptions([...tenantChannels,
    ...(rules.campaigns ?? []).flatMap((c) => c.channels ?? [])]));
  channel.value = chosen;
  evaluateBtn.disabled = false;
  if (typeof engine.version === 'function') form.after(h('p', { class: 'note' }, `Rules engine ${engine.version()}.`));

  run = () => {
    fill(error);
    let parsed;
    try {
      parsed = JSON.parse(attributes.value);
    } catch (e) {
      showError(`The visitor attributes are not valid JSON: ${e.message}`);
      return;
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      showError('The visitor attributes must be a JSON object, like {"id": "visitor-1"}.');
      return;
    }
    const when = at.value.trim();
    let raw;
    let answer;
    try {
      raw = engine.evaluate(JSON.stringify({ op: 'rules', rules, attributes: parsed, at: when, channel: channel.value }));
      answer = JSON.parse(raw);
    } catch (e) {
      showError(`The rules engine failed: ${e.message}`);
      return;
    }
    if (answer.error) {
      showError(answer.error);
      return;
    }
    fill(result, testerResult(t, rules, answer, raw, when));
  };
  run();
}

function testerResult(t, rules, answer, raw, at) {
  const matched = answer.segments ?? [];
  const others = Object.keys(rules.segments ?? {}).filter((n) => !matched.includes(n));
  const assignments = answer.experiments ?? [];
  const live = answer.campaigns ?? [];
  const previewBody = {
    segments: matched,
    variations: Object.fromEntries(assignments.filter((a) => a.inExperiment).map((a) => [a.key, a.variation])),
    at,
    path: '/',
  };
  return [
    h('h2', {}, 'Result'),
    h('h3', {}, 'Segments matched'),
    h('ul', { id: 'matched-segments', class: 'segment-list' }, matched.map((n) => h('li', {}, n))),
    matched.length ? null : h('p', {}, 'No segment matches this visitor.'),
    others.length ? [h('h3', {}, 'Not matched'), h('ul', { id: 'unmatched-segments', class: 'segment-list' }, others.map((n) => h('li', {}, n)))] : null,
    h('h3', {}, 'Experiments'),
    assignments.length
      ? table('assignments', 'Experiment assignments', ['Experiment', 'Variation', 'Name', 'Value', 'In experiment'], assignments.map((a) => h('tr', { 'data-experiment': a.key },
        h('th', { scope: 'row' }, a.key),
        numCell('variation', a.variation, String(a.variation)),
        h('td', { 'data-field': 'name' }, a.name ?? '—'),
        h('td', { 'data-field': 'value' }, h('code', {}, clip(JSON.stringify(a.value) ?? 'null', 80))),
        h('td', { 'data-field': 'inExperiment', 'data-value': String(!!a.inExperiment) }, a.inExperiment ? 'yes' : 'no (sees the control)'))))
      : h('p', {}, 'No experiments in the rules.'),
    h('h3', {}, 'Campaigns live'),
    h('ul', { id: 'live-campaigns' }, live.map((c) => h('li', { 'data-campaign': c.id, 'data-held-out': String(!!c.heldOut) },
      h('a', { href: campaignHref(t, c.id, sessionStorage.getItem(goalKey(t))) }, c.name || c.id), ' ',
      h('span', { class: 'muted' }, `(${c.id}, priority ${c.priority ?? 0}) `),
      c.heldOut ? badge('held out') : badge('shown')))),
    live.length ? null : h('p', {}, 'No campaign is live for this visitor at that instant on that channel.'),
    h('div', { class: 'buttons' }, button({ id: 'preview-visitor' }, 'Preview as this visitor', () => createPreview(t.name, previewBody))),
    h('p', { class: 'note' }, 'The preview forces these segments, variations and instant; a campaign holdout still hashes your own browser’s visitor id, not the id above.'),
    h('h3', {}, 'Raw answer'),
    h('pre', { id: 'tester-json' }, raw),
  ];
}

boot();
