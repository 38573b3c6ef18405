// The diagram page's behaviour: pan and zoom (the SVG's viewBox), hiding lanes, search,
// and the details of a clicked event. Everything it needs is in the page.
(function () {
  'use strict';
  const events = JSON.parse(document.getElementById('events').textContent);
  const layout = JSON.parse(document.getElementById('lanes-data').textContent);
  const lanes = layout.lanes;
  const svg = document.getElementById('diagram');
  const stage = document.getElementById('stage');
  const sticky = document.getElementById('sticky');
  const details = document.getElementById('details');
  const search = document.getElementById('search');
  const count = document.getElementById('count');
  const full = { w: Number(svg.getAttribute('width')), h: Number(svg.getAttribute('height')) };
  svg.removeAttribute('width');
  svg.removeAttribute('height');
  const circles = [];
  for (const circle of svg.querySelectorAll('circle.ev')) {
    circles[Number(circle.dataset.i)] = circle;
  }
  const laneElements = Array.from(svg.querySelectorAll('[data-lane], [data-from]'));
  const firstHeaderBottom = layout.top;
  const view = { x: 0, y: 0, k: 1 };
  const hiddenLanes = new Set();

  for (const [index, lane] of lanes.entries()) {
    const span = document.createElement('span');
    span.textContent = lane.label;
    span.dataset.lane = String(index);
    sticky.appendChild(span);
  }

  function apply() {
    const w = stage.clientWidth / view.k;
    const h = stage.clientHeight / view.k;
    svg.setAttribute('viewBox', view.x + ' ' + view.y + ' ' + w + ' ' + h);
    sticky.style.display = view.y > firstHeaderBottom - 40 ? 'block' : 'none';
    for (const span of sticky.children) {
      const lane = lanes[Number(span.dataset.lane)];
      span.style.left = ((lane.x - view.x) * view.k) + 'px';
      span.classList.toggle('hidden', hiddenLanes.has(Number(span.dataset.lane)));
    }
  }

  function zoomAt(factor, sx, sy) {
    const k = Math.min(8, Math.max(0.03, view.k * factor));
    const px = view.x + sx / view.k;
    const py = view.y + sy / view.k;
    view.k = k;
    view.x = px - sx / k;
    view.y = py - sy / k;
    apply();
  }

  function fitWidth() {
    view.k = Math.min(1.5, stage.clientWidth / full.w);
    view.x = 0;
    view.y = 0;
    apply();
  }

  // Brings an event to the middle of the screen's height; sideways only when it is off
  // screen, so that the lanes do not jump about from one match to the next.
  function centerOn(index) {
    const e = circles[index];
    const cx = Number(e.getAttribute('cx'));
    const cy = Number(e.getAttribute('cy'));
    const w = stage.clientWidth / view.k;
    if (cx < view.x + 20 / view.k || cx > view.x + w - 20 / view.k) {
      view.x = Math.max(0, cx - w / 2);
    }
    view.y = cy - stage.clientHeight / (2 * view.k);
    apply();
  }

  // Pan: drag anywhere; a press that barely moves is a click.
  let drag = null;
  stage.addEventListener('pointerdown', (event) => {
    drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y, moved: false };
  });
  window.addEventListener('pointermove', (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 4) {
      drag.moved = true;
      stage.classList.add('dragging');
    }
    if (drag.moved) {
      view.x = drag.vx - dx / view.k;
      view.y = drag.vy - dy / view.k;
      apply();
    }
  });
  window.addEventListener('pointerup', (event) => {
    const wasClick = drag && !drag.moved;
    drag = null;
    stage.classList.remove('dragging');
    if (wasClick && stage.contains(event.target)) clickAt(event);
  });
  stage.addEventListener('wheel', (event) => {
    event.preventDefault();
    const box = stage.getBoundingClientRect();
    zoomAt(Math.exp(-event.deltaY * 0.0015), event.clientX - box.left, event.clientY - box.top);
  }, { passive: false });
  document.getElementById('zoom-in').addEventListener('click', () => {
    zoomAt(1.25, stage.clientWidth / 2, stage.clientHeight / 2);
  });
  document.getElementById('zoom-out').addEventListener('click', () => {
    zoomAt(0.8, stage.clientWidth / 2, stage.clientHeight / 2);
  });
  document.getElementById('zoom-fit').addEventListener('click', fitWidth);
  window.addEventListener('keydown', (event) => {
    if (event.target === search) return;
    if (event.key === '+' || event.key === '=') zoomAt(1.25, stage.clientWidth / 2, 0);
    if (event.key === '-') zoomAt(0.8, stage.clientWidth / 2, 0);
    if (event.key === '0') fitWidth();
  });
  window.addEventListener('resize', apply);

  // A click selects the event under the pointer, or the nearest within 10 screen pixels; a
  // click on an arrow or its label selects the arrow's receive (or a stub's event).
  function clickAt(event) {
    const target = event.target.closest('circle.ev, text.local, line.msg, text.label, line.stub');
    if (target && target.dataset.i !== undefined) return select(Number(target.dataset.i));
    if (target && target.dataset.r !== undefined) return select(Number(target.dataset.r));
    if (target && target.dataset.s !== undefined) return select(Number(target.dataset.s));
    const box = stage.getBoundingClientRect();
    const px = view.x + (event.clientX - box.left) / view.k;
    const py = view.y + (event.clientY - box.top) / view.k;
    let best = -1;
    let bestDistance = 10 / view.k;
    for (const [index, circle] of circles.entries()) {
      if (!circle || hiddenLanes.has(events[index].lane)) continue;
      const d = Math.hypot(Number(circle.getAttribute('cx')) - px,
        Number(circle.getAttribute('cy')) - py);
      if (d < bestDistance) {
        best = index;
        bestDistance = d;
      }
    }
    if (best >= 0) select(best);
  }

  function physicalTime(wallNs) {
    try {
      const ns = BigInt(wallNs);
      const ms = Number(ns / 1000000n);
      const rest = String(ns % 1000000000n).padStart(9, '0');
      return new Date(ms).toISOString().replace(/\.\d+Z$/, '.' + rest + 'Z');
    } catch (error) {
      return '';
    }
  }

  function row(table, name, value) {
    const tr = table.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = value;
  }

  function describe(e) {
    return e.kind + ' ' + (e.type || e.text) + ' at ' + e.node + ' seq ' + e.seq + ', lc ' + e.lc;
  }

  function select(index) {
    for (const old of svg.querySelectorAll('.sel, .partner, .sel-msg')) {
      old.classList.remove('sel', 'partner', 'sel-msg');
    }
    const e = events[index];
    circles[index].classList.add('sel');
    details.replaceChildren();
    const h2 = document.createElement('h2');
    h2.textContent = e.kind + (e.type ? ' ' + e.type : '') + ' at ' + e.node;
    details.appendChild(h2);
    const table = document.createElement('table');
    table.id = 'fields';
    for (const name of ['run', 'node', 'inc', 'seq', 'lc', 'kind', 'type', 'peer', 'text']) {
      row(table, name, String(e[name]));
    }
    row(table, 'msg', e.msg ? e.msg.node + ' / ' + e.msg.inc + ' / lc ' + e.msg.lc : '(none)');
    row(table, 'wall_ns', e.wall_ns);
    row(table, 'physical', physicalTime(e.wall_ns));
    row(table, 'ext', String(e.ext));
    details.appendChild(table);
    const note = document.createElement('div');
    note.className = 'partner-link';
    note.id = 'partner';
    if (e.partner !== null) {
      const other = events[e.partner];
      circles[e.partner].classList.add('partner');
      const [send, recv] = e.kind === 'send' ? [index, e.partner] : [e.partner, index];
      for (const element of svg.querySelectorAll(
        '[data-s="' + send + '"][data-r="' + recv + '"]')) {
        element.classList.add('sel-msg');
      }
      note.append((e.kind === 'send' ? 'matched receive: ' : 'matched send: '));
      const link = document.createElement('a');
      link.textContent = describe(other);
      link.addEventListener('click', () => {
        select(e.partner);
        centerOn(e.partner);
      });
      note.appendChild(link);
    } else if (e.kind === 'recv') {
      note.textContent = 'from a process that keeps no log (CLI, bench): no matched send';
    } else if (e.kind === 'send') {
      note.textContent = 'no matched receive in the logs: to a process with no log, ' +
        'lost, or still in flight';
    } else {
      note.textContent = 'local event';
    }
    details.appendChild(note);
    window.pbkvSelected = index;
  }

  // Hiding lanes.
  for (const box of document.querySelectorAll('#lanes input[type=checkbox]')) {
    box.addEventListener('change', () => {
      const lane = Number(box.dataset.lane);
      if (box.checked) hiddenLanes.delete(lane); else hiddenLanes.add(lane);
      for (const element of laneElements) {
        const own = [element.dataset.lane, element.dataset.from, element.dataset.to];
        element.classList.toggle('hidden',
          own.some((value) => value !== undefined && hiddenLanes.has(Number(value))));
      }
      apply();
    });
  }

  // Search: message type, text, peer or node; Enter goes to the next match.
  let matches = [];
  let matchAt = -1;
  search.addEventListener('input', () => {
    const query = search.value.trim().toLowerCase();
    for (const old of svg.querySelectorAll('.hit')) old.classList.remove('hit');
    matches = [];
    matchAt = -1;
    if (!query) {
      svg.classList.remove('searching');
      count.textContent = '';
      return;
    }
    for (const [index, e] of events.entries()) {
      const haystack = (e.type + ' ' + e.text + ' ' + e.peer + ' ' + e.node).toLowerCase();
      if (!haystack.includes(query)) continue;
      matches.push(index);
      circles[index].classList.add('hit');
    }
    const hit = new Set(matches);
    for (const element of svg.querySelectorAll('text.local, line.msg, text.label')) {
      const own = element.dataset.i !== undefined ? element.dataset.i : element.dataset.r;
      if (own !== undefined && hit.has(Number(own))) element.classList.add('hit');
      if (element.dataset.s !== undefined && hit.has(Number(element.dataset.s))) {
        element.classList.add('hit');
      }
    }
    svg.classList.add('searching');
    count.textContent = matches.length + (matches.length === 1 ? ' match' : ' matches') +
      (matches.length ? ' (Enter: next)' : '');
  });
  search.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || matches.length === 0) return;
    matchAt = (matchAt + 1) % matches.length;
    select(matches[matchAt]);
    centerOn(matches[matchAt]);
  });

  fitWidth();
  window.pbkvDiagramReady = true;
}());
