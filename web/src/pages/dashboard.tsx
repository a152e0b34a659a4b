import { useEffect } from "preact/hooks";
import { api, type Alarm, type Counter, type DailyCounters, type Statistics } from "../api";
import { TimeChart } from "../components/chart";
import { AlarmTable } from "./alarms";
import { LoadState, Page, formatNumber, useInterval, useLoad } from "../components/ui";

const COUNTERS: { key: keyof Statistics; label: string; href: string }[] = [
  { key: "devices", label: "Imported devices", href: "/devices" },
  { key: "online_devices", label: "Monitoring devices", href: "/devices?online=true" },
  { key: "users", label: "System users", href: "/users" },
  { key: "system_integrators", label: "System integrators", href: "/integrators" },
  { key: "business_customers", label: "Business customers", href: "/customers" },
  { key: "license_keys", label: "License keys", href: "/license-keys" },
];

function Change({ counter }: { counter: Counter }) {
  if (counter.change == null) return <span class="change muted">no data a week ago</span>;
  const c = counter.change;
  const pct = counter.week_ago ? ` (${((c / counter.week_ago) * 100).toFixed(1)} %)` : "";
  const tone = c > 0 ? "up" : c < 0 ? "down" : "muted";
  return (
    <span class={`change ${tone}`}>
      {c > 0 ? "▲ +" : c < 0 ? "▼ " : "± "}
      {formatNumber(c)}
      {pct} vs last week
    </span>
  );
}

export function Dashboard() {
  const stats = useLoad((signal) => api<Statistics>("/statistics", { signal }), []);
  const history = useLoad((signal) => api<DailyCounters[]>("/statistics/history", { query: { days: 30 }, signal }), []);
  const alarms = useLoad((signal) => api<Alarm[]>("/alarms", { query: { state: "open", limit: 10 }, signal }), []);
  // Alarms change by the second; the counters cost a count over the whole
  // registry, so they refresh once a minute.
  useInterval(alarms.reload, 15_000);
  useInterval(stats.reload, 60_000);
  useEffect(() => {
    if (stats.data) performance.mark("telemark:dashboard-ready");
  }, [stats.data]);

  return (
    <Page title="Dashboard">
      <LoadState loaded={stats}>
        {(s) => (
          <div class="counters" data-testid="counters">
            {COUNTERS.map(({ key, label, href }) => (
              <a class="counter card" href={href} data-counter={key}>
                <span class="counter-label">{label}</span>
                <span class="counter-value">{formatNumber(s[key].value)}</span>
                <Change counter={s[key]} />
              </a>
            ))}
          </div>
        )}
      </LoadState>
      <div class="grid-2">
        <section class="card">
          <h2>Online and offline devices, last 30 days</h2>
          <LoadState loaded={history} empty="No daily snapshot yet: they are taken every hour.">
            {(days) => (
              <TimeChart
                title="Devices"
                lines={[
                  { label: "online", color: "#2ea043" },
                  { label: "offline", color: "#8b949e" },
                ]}
                data={[
                  days.map((d) => d.day / 1000),
                  days.map((d) => d.online_devices),
                  days.map((d) => d.devices - d.online_devices),
                ]}
                height={220}
                xRange={[Date.now() - 30 * 86400_000, Date.now()]}
              />
            )}
          </LoadState>
        </section>
        <section class="card">
          <h2>
            Active alarms <a href="/alarms">all alarms ›</a>
          </h2>
          <LoadState loaded={alarms} empty="No open alarms.">
            {(list) => <AlarmTable alarms={list} onChange={alarms.reload} compact />}
          </LoadState>
        </section>
      </div>
    </Page>
  );
}
