using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Vmm.Host.Tests.Run;

namespace Vmm.Host.Tests.VhostUser;

/// <summary>
/// Reconnect on return (docs/reconnect.md): <c>vmm serve blk</c> killed under a running
/// <c>vmm run</c>, left down long enough for the backoff to grow to seconds (its cap raised to
/// 60 s), then started again. The device must connect because the socket appeared, not because
/// a backoff tick came: the VMM says which in its log, and the workload's result must be right.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class ReconnectOnReturnTests
{
    [Test]
    public void A_backend_back_after_a_long_outage_is_reconnected_by_its_socket_not_by_the_backoff()
    {
        using var dir = new WorkDir();
        using var image = new TempImage(4 << 20, seed: 31);
        string socket = dir["blk.sock"];
        ServeProcess first = ServeProcess.Blk(image.Path, socket);
        var stderr = new StringBuilder();
        var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = VmmProcess.RepoRoot,
        };
        foreach (string a in new[] { "run", "--vhost-user", $"{socket},type=blk,reconnect-max-delay=60", "--workload", "bench", "--seconds", "12", "--rw", "randrw", "--iodepth", "4" })
        {
            start.ArgumentList.Add(a);
        }

        using Process run = Process.Start(start)!;
        Task<string> stdout = run.StandardOutput.ReadToEndAsync();
        run.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }
        };
        run.BeginErrorReadLine();
        string Log()
        {
            lock (stderr)
            {
                return stderr.ToString();
            }
        }

        ServeProcess? second = null;
        try
        {
            // Running requests first, then a crash.
            WaitFor(() => first.Log.Contains("connected", StringComparison.OrdinalIgnoreCase), "the first back-end never saw vmm run", () => first.Log + Log());
            Thread.Sleep(1000);
            first.Kill();

            // Down long enough for several failed attempts: the next tick is then seconds away
            // (100 ms doubling: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s have passed; the next waits 3.2 s or more).
            WaitFor(() => Log().Contains("attempt 5", StringComparison.Ordinal), "the device did not keep retrying", Log);
            second = ServeProcess.Blk(image.Path, socket);
            Assert.That(run.WaitForExit(TimeSpan.FromMinutes(3)), Is.True, "vmm run did not end");
        }
        finally
        {
            if (!run.HasExited)
            {
                run.Kill(entireProcessTree: true);
            }

            first.Dispose();
            second?.Dispose();
        }

        run.WaitForExit();
        string log = Log();
        string[] lines = log.Split('\n');
        int back = Array.FindIndex(lines, l => l.Contains("socket is back; reconnecting now.", StringComparison.Ordinal));
        int restored = Array.FindIndex(lines, l => l.Contains("connection restored", StringComparison.Ordinal));
        Assert.Multiple(() =>
        {
            Assert.That(run.ExitCode, Is.Zero, log);
            Assert.That(stdout.Result, Does.Contain("IOPS").Or.Contain("iops"), log);
            Assert.That(back, Is.GreaterThanOrEqualTo(0), "the reconnect was not started by the socket appearing:\n" + log);
            Assert.That(restored, Is.GreaterThan(back), "no connection restored after the socket appeared:\n" + log);

            // A socket is created by bind(2) before its listen(2): an attempt in between is
            // refused and the next follows within the settle delay (20 ms), never the backoff.
            Assert.That(
                lines.Skip(back + 1).Take(restored - back - 1).Select(l => Regex.Match(l, @"reconnecting in (\d+) ms")).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)),
                Has.All.LessThanOrEqualTo(20),
                "an attempt after the socket appeared waited for the backoff:\n" + log);
        });
    }

    private static void WaitFor(Func<bool> condition, string what, Func<string> context)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > TimeSpan.FromMinutes(2))
            {
                Assert.Fail($"{what}:\n{context()}");
            }

            Thread.Sleep(20);
        }
    }
}
