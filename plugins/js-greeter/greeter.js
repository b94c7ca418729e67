import { fragment } from 'veneer:plugin/content@0.2.2';
import { track } from 'veneer:plugin/analytics@0.2.2';
import { config } from 'veneer:plugin/host@0.2.2';

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

export const hooks = {
  onRequest(request, visitor, plan) {},
  onResponse(request, response, visitor, plan) {
    const type = response.header('content-type') ?? '';
    if (response.status() !== 200 || !type.startsWith('text/html')) return;
    const returning = visitor.inSegment('returning');
    const selector = config('selector') ?? 'h1';
    const copy = fragment(returning ? 'greeting-returning' : 'greeting-new')
      ?? (returning ? 'Welcome back!' : 'Welcome!');
    plan.beforeHtml(selector, `<p class="greeting" data-lang="js">${escapeHtml(copy)}</p>`);
    track('greeting_shown', [['returning', returning ? 'yes' : 'no']]);
  },
  onElement(subscription, element) {},
  onText(subscription, node) {},
};
