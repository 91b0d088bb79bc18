// Opens OHIF's study list, finds a study by patient name, opens it, and screenshots the
// viewport. Prints a JSON report: failed DICOMweb requests, timings, screenshot path.
// With --login (an archive with STRATA_AUTH_MODE=oidc): OHIF first sends the browser to the
// identity provider's login page (mock-oauth2-server: any username) and comes back with an
// authorization code (PKCE); the report also counts the DICOMweb requests that carried a
// bearer token.
// usage: node ohif.mjs BASE_URL PATIENT_NAME STUDY_UID OUT_PNG [--login]
import { chromium } from 'playwright-core';

const [base, patientName, studyUid, outPng, flag] = process.argv.slice(2);
const login = flag === '--login';
const report = { failed: [], dicomweb: 0, with_token: 0, steps: {} };
const t0 = Date.now();
const mark = (k) => { report.steps[k] = Date.now() - t0; };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--use-angle=swiftshader', '--enable-unsafe-swiftshader'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('response', (r) => {
    if (r.url().includes('/dicom-web/')) {
      report.dicomweb += 1;
      if ((r.request().headers().authorization || '').startsWith('Bearer ')) report.with_token += 1;
      if (r.status() >= 400) report.failed.push(`${r.status()} ${r.url()}`);
    }
  });
  page.on('requestfailed', (r) => {
    if (r.url().includes('/dicom-web/')) report.failed.push(`failed ${r.url()} ${r.failure()?.errorText}`);
  });
  await page.goto(base + '/', { waitUntil: 'domcontentloaded' });
  if (login) {
    // The provider's login page (another origin): sign in as a made-up user.
    const user = page.locator('input[name="username"]');
    await user.waitFor({ timeout: 60000 });
    report.login_page = new URL(page.url()).origin !== new URL(base).origin;
    await user.fill('dr-test');
    await page.locator('input[type="submit"]').click();
    mark('login');
  }
  // The study list: the study's row shows the patient name.
  const row = page.getByText(patientName, { exact: false }).first();
  await row.waitFor({ timeout: 60000 });
  mark('study_list');
  // Open it in the basic viewer (what "Basic Viewer" in the row does).
  if (login) {
    // Inside the app, not a reload: the signed-in user lives in this page's session.
    await page.evaluate((url) => {
      window.history.pushState({}, '', url);
      window.dispatchEvent(new PopStateEvent('popstate'));
    }, `/viewer?StudyInstanceUIDs=${studyUid}`);
  } else {
    await page.goto(`${base}/viewer?StudyInstanceUIDs=${studyUid}`, { waitUntil: 'domcontentloaded' });
  }
  const canvas = page.locator('canvas').first();
  await canvas.waitFor({ timeout: 60000 });
  mark('viewport');
  // Wait until the viewport has drawn something (non-black pixels), or time out.
  const deadline = Date.now() + 60000;
  let lit = 0;
  while (Date.now() < deadline) {
    lit = await page.evaluate(() => {
      let best = 0;
      for (const c of document.querySelectorAll('canvas')) {
        if (c.width < 64 || c.height < 64) continue;
        const tmp = document.createElement('canvas');
        tmp.width = c.width; tmp.height = c.height;
        const ctx = tmp.getContext('2d');
        ctx.drawImage(c, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 16) if (d[i] + d[i + 1] + d[i + 2] > 30) n++;
        best = Math.max(best, n);
      }
      return best;
    });
    if (lit > 100) break;
    await page.waitForTimeout(500);
  }
  mark('first_image');
  report.lit_pixels = lit;
  await page.waitForTimeout(1000);
  const box = await canvas.boundingBox();
  await page.screenshot({ path: outPng, clip: box || undefined });
  report.screenshot = outPng;
} catch (e) {
  report.error = String(e);
} finally {
  await browser.close();
  console.log(JSON.stringify(report));
}
