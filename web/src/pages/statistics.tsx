import { useState } from "preact/hooks";
import { api, type DailyCounters } from "../api";
import { TimeChart } from "../components/chart";
import { LoadState, Page, Table, formatNumber, useLoad, valueOf } from "../components/ui";

const SERIES: { key: keyof Omit<DailyCounters, "day">; label: string; color: string }[] = [
  { key: "devices", label: "Imported devices", color: "#1f6feb" },
  { key: "online_devices", label: "Monitoring (online)", color: "#2ea043" },
  { key: "license_keys", label: "License keys", color: "#a371f7" },
  { key: "users", label: "System users", color: "#d29922" },
  { key: "system_integrators", label: "System integrators", color: "#db6d28" },
  { key: "business_customers", label: "Business customers", color: "#f778ba" },
];

const dayFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });

export function Statistics() {
  const [days, setDays] = useState("30");
  const history = useLoad(
    (signal) => api<DailyCounters[]>("/statistics/history", { query: { days }, signal }),
    [days],
  );
  return (
    <Page
      title="Statistics"
      actions={
        <select aria-label="period" value={days} onChange={(e) => setDays(valueOf(e))}>
          <option value="7">Last 7 days</option>
          <option value="30">Last 30 days</option>
          <option value="90">Last 90 days</option>
          <option value="366">Last year</option>
        </select>
      }
    >
      <LoadState loaded={history} empty="No daily snapshot yet: the platform takes one every hour.">
        {(rows) => (
          <>
            <div class="charts">
              <TimeChart
                title="Devices"
                lines={SERIES.slice(0, 2).map(({ label, color }) => ({ label, color }))}
                data={[rows.map((r) => r.day / 1000), ...SERIES.slice(0, 2).map((s) => rows.map((r) => r[s.key]))]}
                xRange={[Date.now() - Number(days) * 86400_000, Date.now()]}
              />
              <TimeChart
                title="Licenses, users and organisations"
                lines={SERIES.slice(2).map(({ label, color }) => ({ label, color }))}
                data={[rows.map((r) => r.day / 1000), ...SERIES.slice(2).map((s) => rows.map((r) => r[s.key]))]}
                xRange={[Date.now() - Number(days) * 86400_000, Date.now()]}
              />
            </div>
            <Table
              testId="statistics"
              columns={[
                { title: "Day (UTC)", cell: (r: DailyCounters) => dayFormat.format(new Date(r.day)) },
                ...SERIES.map((s) => ({ title: s.label, cell: (r: DailyCounters) => formatNumber(r[s.key]) })),
              ]}
              rows={[...rows].reverse()}
              rowKey={(r) => r.day}
            />
          </>
        )}
      </LoadState>
    </Page>
  );
}
