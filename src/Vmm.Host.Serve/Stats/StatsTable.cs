using System.Globalization;
using Spectre.Console;

namespace Vmm.Host.Stats;

/// <summary>
/// <c>--stats</c> of <c>vmm serve</c> and <c>vmm run</c>: once a second, the figures of every
/// queue (<see cref="StatsCollector"/>, fed by a MeterListener: what dotnet-counters or
/// OpenTelemetry would see) on stderr, never on stdout, where results and --json go. On a
/// terminal, a live table redrawn in place; otherwise one plain <c>key=value</c> line per queue
/// and second, for logs and scripts. Runs on its own thread from <see cref="Start()"/> to
/// <see cref="Dispose"/>, which prints the last window.
/// </summary>
public sealed class StatsTable : IDisposable
{
    /// <summary>How often the figures are refreshed.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(1);

    private static readonly string[] s_directions = ["read", "write", "other"];

    private readonly StatsCollector _collector = new();
    private readonly TextWriter _error;
    private readonly bool _live;
    private readonly ManualResetEventSlim _stop = new();
    private readonly Thread _thread;

    private StatsTable(TextWriter error, bool live)
    {
        _error = error;
        _live = live;
        _thread = new Thread(Run) { IsBackground = true, Name = "vmm-stats" };
    }

    /// <summary>Starts printing to stderr: a live table when stderr is a terminal, plain lines otherwise.</summary>
    public static StatsTable Start() => Start(Console.Error, !Console.IsErrorRedirected);

    /// <summary>Starts printing to <paramref name="error"/>, as a live table when <paramref name="live"/>.</summary>
    public static StatsTable Start(TextWriter error, bool live)
    {
        ArgumentNullException.ThrowIfNull(error);
        var table = new StatsTable(error, live);
        table._thread.Start();
        return table;
    }

    /// <summary>One plain line for a row: <c>vmm-stats side=backend device=blk queue=0 requests=N read_iops=... ...</c>.</summary>
    public static string FormatLine(StatsRow row)
    {
        ArgumentNullException.ThrowIfNull(row);
        var line = new System.Text.StringBuilder(256);
        line.Append(CultureInfo.InvariantCulture, $"vmm-stats side={row.Side} device={row.Device} queue={row.Queue} requests={row.Requests}");
        for (int d = 0; d < s_directions.Length; d++)
        {
            line.Append(CultureInfo.InvariantCulture, $" {s_directions[d]}_iops={row.RequestsPerSecond[d]:0} {s_directions[d]}_mibps={row.MebibytesPerSecond[d]:0.0}");
        }

        line.Append(CultureInfo.InvariantCulture, $" in_flight={row.InFlight} p50_us={row.P50Microseconds:0.0} p99_us={row.P99Microseconds:0.0}");
        line.Append(CultureInfo.InvariantCulture, $" kicks_per_s={row.KicksPerSecond:0} interrupts_per_s={row.InterruptsPerSecond:0} reconnects={row.Reconnects} faults={row.Faults}");
        return line.ToString();
    }

    public void Dispose()
    {
        if (_stop.IsSet)
        {
            return;
        }

        _stop.Set();
        _thread.Join();
        _collector.Dispose();
        _stop.Dispose();
    }

    private void Run()
    {
        try
        {
            if (_live)
            {
                RunLive();
            }
            else
            {
                RunPlain();
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            // stderr went away (a closed pipe): the statistics stop, the program goes on.
        }
    }

    private void RunPlain()
    {
        bool last = false;
        while (!last)
        {
            last = _stop.Wait(Interval);
            foreach (StatsRow row in _collector.Collect())
            {
                _error.WriteLine(FormatLine(row));
            }

            _error.Flush();
        }
    }

    private void RunLive()
    {
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(_error) });
        console.Live(Render([])).AutoClear(false).Start(context =>
        {
            bool last = false;
            while (!last)
            {
                last = _stop.Wait(Interval);
                context.UpdateTarget(Render(_collector.Collect()));
                context.Refresh();
            }
        });
    }

    private static Table Render(IReadOnlyList<StatsRow> rows)
    {
        // Compact, so that an 80-column terminal holds it: side, device and queue in one cell
        // (be:blk/0), rates per second as the title says, reconnects and faults in one cell
        // (rc/flt), no column rules, numbers of at most five characters.
        var table = new Table().Border(TableBorder.Simple).Title("vmm --stats: per second; latency (µs) of the last second");
        foreach (string column in (string[])["queue", "rd", "wr", "other", "rMiB", "wMiB", "infl", "p50", "p99", "kick", "irq", "rc/flt"])
        {
            table.AddColumn(new TableColumn(column).RightAligned().PadLeft(0).PadRight(1));
        }

        table.Columns[0].LeftAligned().NoWrap();

        foreach (StatsRow row in rows)
        {
            table.AddRow(
                Markup.Escape($"{(row.Side == "backend" ? "be" : "fe")}:{row.Device}/{row.Queue}"),
                Number(row.RequestsPerSecond[0]),
                Number(row.RequestsPerSecond[1]),
                Number(row.RequestsPerSecond[2]),
                Mebibytes(row.MebibytesPerSecond[0]),
                Mebibytes(row.MebibytesPerSecond[1]),
                Number(row.InFlight),
                Number(row.P50Microseconds),
                Number(row.P99Microseconds),
                Number(row.KicksPerSecond),
                Number(row.InterruptsPerSecond),
                row.Faults == 0 ? $"{Number(row.Reconnects)}/0" : $"{Number(row.Reconnects)}/[red]{Number(row.Faults)}[/]");
        }

        return table;
    }

    /// <summary>At most five characters: 950, 12.3k, 456k, 1.2M.</summary>
    private static string Number(double value) => value switch
    {
        >= 999_500 => (value / 1e6).ToString("0.0", CultureInfo.InvariantCulture) + "M",
        >= 99_950 => (value / 1e3).ToString("0", CultureInfo.InvariantCulture) + "k",
        >= 9_999.5 => (value / 1e3).ToString("0.0", CultureInfo.InvariantCulture) + "k",
        _ => value.ToString("0", CultureInfo.InvariantCulture),
    };

    private static string Mebibytes(double value) =>
        value.ToString(value >= 99.95 ? "0" : "0.0", CultureInfo.InvariantCulture);
}
