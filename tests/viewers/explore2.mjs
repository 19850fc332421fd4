import puppeteer from 'puppeteer-core';
import fs from 'node:fs';
const base = process.env.BASE; const url = base + process.argv[2]; const out = process.argv[3] || '/tmp/vw/exp/shot';
const browser = await puppeteer.launch({executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox','--disable-gpu','--disable-quic','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync','--user-data-dir=/tmp/vw/exp/profile-'+Date.now(), '--use-angle=swiftshader','--enable-unsafe-swiftshader'],
  defaultViewport: {width: 1600, height: 1000}});
const page = await browser.newPage();
const log = [];
page.on('pageerror', e => log.push('PAGEERROR ' + (e.stack || e.message)));
page.on('console', async m => { if (/Error Boundary|went wrong/.test(m.text())) { for (const a of m.args()) { try { const st = await a.evaluate(e => e && e.stack); if (st) log.push('STACK ' + st.slice(0, 1500)); } catch (e) {} } } if (process.env.ALLCONSOLE || ['error','warning','warn'].includes(m.type())) log.push(m.type().toUpperCase()+' '+m.text().slice(0,800)); });
page.on('response', r => { if (r.status() >= 400) log.push('HTTP ' + r.status() + ' ' + r.url()); });
await page.evaluateOnNewDocument(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
const t0 = Date.now();
await page.goto(url, {waitUntil: 'networkidle0', timeout: 60000});
console.log('loaded', Date.now()-t0);
await new Promise(r => setTimeout(r, Number(process.env.WAIT || 3000)));
for (const c of (process.env.CLICK||'').split(',').filter(Boolean)) { await page.click(`[data-cy="${c}"]`); await new Promise(r => setTimeout(r, 1500)); }
const info = await page.evaluate(() => {
  const s = window.services;
  const ds = s.displaySetService.getActiveDisplaySets().map(d => ({uid: d.displaySetInstanceUID, mod: d.Modality, sop: d.SOPClassHandlerId, loaded: d.isLoaded, hydrated: d.isHydrated, series: d.SeriesInstanceUID, n: d.numImageFrames, meas: d.measurements?.length}));
  const segs = s.segmentationService.getSegmentations().map(g => ({id: g.segmentationId, label: g.label, segments: Object.values(g.segments||{}).map(x => x && ({i: x.segmentIndex, label: x.label, color: x.color}))}));
  const meas = s.measurementService.getMeasurements().map(m => ({label: m.label, toolName: m.toolName, displayText: m.displayText, ref: m.referenceSeriesUID}));
  const vp = s.viewportGridService.getActiveViewportId();
  const colors = s.segmentationService.getSegmentations().map(g => Object.keys(g.segments||{}).map(i => { try { return s.segmentationService.getSegmentColor(vp, g.segmentationId, Number(i)); } catch (e) { return String(e); } }));
  const dataCy = [...document.querySelectorAll('[data-cy]')].map(e => e.getAttribute('data-cy'));
  return {ds, segs, colors, meas, dataCy: dataCy.slice(-8)};
});
console.log(JSON.stringify(info, null, 1));
await page.screenshot({path: out + '.png'});
fs.writeFileSync(out + '.txt', await page.evaluate(() => document.body.innerText));
console.log(log.join('\n'));
await browser.close();
