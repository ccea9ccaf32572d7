using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Vmm.Host.Tests.Run;
using Vmm.Host.Tests.VhostUser;

namespace Vmm.Host.Tests.Stats;

/// <summary>
/// <c>--stats</c> as a user meets it: <c>vmm serve blk --stats</c> and <c>vmm run --stats --json</c>
/// with stderr not a terminal, so both print one <c>vmm-stats</c> line per queue and second on
/// stderr, while stdout carries only the bench's JSON.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed partial class StatsProcessTests
{
    [Test]
    public void Serve_and_run_print_per_queue_lines_on_stderr_and_the_json_on_stdout_stays_clean()
    {
        using var dir = new WorkDir();
        using var image = new TempImage(16 << 20, seed: 7);
        string socket = dir["blk.sock"];
        using ServeProcess serve = ServeProcess.Start(socket, "serve", "blk", "--socket", socket, "--disk", image.Path, "--stats");

        VmmProcess.Result run = VmmProcess.Run(
            "run", "--vhost-user", $"{socket},type=blk", "--workload", "bench", "--seconds", "2", "--json", "--rw", "randread", "--iodepth", "4", "--stats");

        Assert.That(run.ExitCode, Is.Zero, run.Stderr);
        string[] stdout = run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(stdout, Has.Length.EqualTo(1), "stdout is the JSON line alone");
        using JsonDocument json = JsonDocument.Parse(stdout[0]);
        long ios = json.RootElement.GetProperty("ios").GetInt64();
        Assert.That(ios, Is.Positive);

        // The run's last line is printed after the bench ended: its cumulative count is the whole run's.
        long frontend = LastRequests(run.Stderr, "frontend", "blk0");
        Assert.That(frontend, Is.GreaterThanOrEqualTo(ios));

        // The server prints each second; its count reaches the guest's once the run is over.
        var clock = Stopwatch.StartNew();
        long backend;
        while ((backend = LastRequests(serve.Log, "backend", "blk")) < frontend && clock.Elapsed < TimeSpan.FromMinutes(1) && !serve.HasExited)
        {
            Thread.Sleep(100);
        }

        Assert.That(backend, Is.EqualTo(frontend), serve.Log);
        Assert.That(serve.Log, Does.Match(@"vmm-stats side=backend device=blk queue=0 requests=[1-9]\d* read_iops=[1-9]"), "a line of the run shows its rate");
    }

    /// <summary>The requests of the last line of <paramref name="side"/>'s queue 0 of <paramref name="device"/>; -1 when none.</summary>
    private static long LastRequests(string log, string side, string device)
    {
        long last = -1;
        foreach (Match m in StatsLine().Matches(log))
        {
            if (m.Groups["side"].Value == side && m.Groups["device"].Value == device && m.Groups["queue"].Value == "0")
            {
                last = long.Parse(m.Groups["requests"].Value, CultureInfo.InvariantCulture);
            }
        }

        return last;
    }

    [GeneratedRegex(@"^vmm-stats side=(?<side>\S+) device=(?<device>\S+) queue=(?<queue>\d+) requests=(?<requests>\d+) ", RegexOptions.Multiline)]
    private static partial Regex StatsLine();
}
