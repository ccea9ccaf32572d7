namespace Vmm.Interop.Tests.Harness;

public sealed partial class BackendProcess
{
    public const string Testpmd = "dpdk-testpmd";

    static int _testpmdCount;

    /// <summary>
    /// DPDK 22.11 testpmd (Debian 12's dpdk-dev) with one vhost-user port on <paramref name="socket"/>
    /// in io forwarding: on a single port every frame the front-end transmits comes back to it (an
    /// echo). No hugepages (<c>--no-huge -m 512</c>, and an mbuf count that fits in it); without
    /// <c>--stats-period</c> a testpmd whose stdin is not a terminal exits at once at EOF. It
    /// serves one front-end after another; its forwarding core polls (a full CPU) until stopped.
    /// </summary>
    public static Task<BackendProcess> StartTestpmdAsync(string socket, int queues = 1)
    {
        var exe = FindOnPath(Testpmd) ??
            throw new AssertionException($"{Testpmd} is not installed (apt-get install dpdk-dev; ./test installs it).");
        // A prefix of its own per process: DPDK keeps its runtime files under /var/run/dpdk/PREFIX.
        var prefix = $"vmm{Environment.ProcessId}x{Interlocked.Increment(ref _testpmdCount)}";
        string[] args =
        [
            "--lcores", "0@0,1@1", "--no-huge", "-m", "512", "--no-pci", "--no-shconf", "--no-telemetry",
            "--file-prefix", prefix, "--vdev", $"net_vhost0,iface={socket},queues={queues}",
            "--", "--forward-mode=io", "--auto-start", "--stats-period", "5", $"--nb-cores=1",
            "--total-num-mbufs=16384",
        ];
        return StartAsync(ChildProcess.Start("dpdk-testpmd", exe, args), socket, () => RemoveRuntimeDirectory(prefix));
    }

    static void RemoveRuntimeDirectory(string prefix)
    {
        try
        {
            Directory.Delete(Path.Combine("/var/run/dpdk", prefix), recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
