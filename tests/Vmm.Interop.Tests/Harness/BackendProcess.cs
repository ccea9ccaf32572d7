namespace Vmm.Interop.Tests.Harness;

public enum BackendKind
{
    /// <summary>qemu-storage-daemon: a third-party vhost-user-blk back-end.</summary>
    StorageDaemon,
    /// <summary>Our back-end: <c>./vmm serve ...</c>.</summary>
    Vmm,
}

/// <summary>
/// A vhost-user back-end process serving on a Unix socket: qemu-storage-daemon,
/// <c>./vmm serve</c>, a virtiofsd or DPDK testpmd (BackendProcess.Virtiofsd.cs,
/// BackendProcess.Testpmd.cs). Started once its socket exists; stopped with SIGTERM, then SIGKILL.
/// </summary>
public sealed partial class BackendProcess : IDisposable
{
    public const string StorageDaemon = "qemu-storage-daemon";

    /// <summary>How long a back-end may take to create its socket (./vmm starts the .NET runtime).</summary>
    public static readonly TimeSpan SocketTimeout = TimeSpan.FromSeconds(30);

    static readonly SemaphoreSlim BuildGate = new(1, 1);
    static bool _vmmBuilt;

    readonly ChildProcess _process;
    readonly Action? _cleanUp;

    BackendProcess(ChildProcess process, string socket, Action? cleanUp = null)
    {
        _process = process;
        Socket = socket;
        _cleanUp = cleanUp;
    }

    public string Socket { get; }
    public ChildProcess Process => _process;
    public bool HasExited => _process.HasExited;
    public string Log => _process.Output;

    /// <summary>qemu-storage-daemon (as Debian 12 ships it) exporting a raw image.</summary>
    public static Task<BackendProcess> StartStorageDaemonAsync(string image, string socket, int queues = 1, bool writable = true)
    {
        var exe = FindOnPath(StorageDaemon) ??
            throw new AssertionException($"{StorageDaemon} is not installed (apt-get install qemu-system-common; ./test installs it).");
        string[] args =
        [
            "--blockdev", $"driver=file,node-name=file0,filename={image}",
            "--blockdev", "driver=raw,node-name=disk0,file=file0",
            "--export", $"type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path={socket}," +
                        $"writable={(writable ? "on" : "off")},num-queues={queues},logical-block-size=512",
        ];
        return StartAsync(ChildProcess.Start(StorageDaemon, exe, args), socket);
    }

    /// <summary><c>./vmm serve blk --socket S --disk IMG [--read-only] [--queues N] [EXTRA...]</c>.</summary>
    public static Task<BackendProcess> StartVmmBlkAsync(string image, string socket, int queues = 1, bool readOnly = false, IReadOnlyList<string>? extra = null)
    {
        List<string> args = ["serve", "blk", "--socket", socket, "--disk", image];
        if (readOnly) args.Add("--read-only");
        if (queues != 1) args.AddRange(["--queues", queues.ToString()]);
        if (extra is not null) args.AddRange(extra);
        return StartVmmAsync(args, socket);
    }

    /// <summary><c>./vmm serve rng --socket S</c>.</summary>
    public static Task<BackendProcess> StartVmmRngAsync(string socket) =>
        StartVmmAsync(["serve", "rng", "--socket", socket], socket);

    /// <summary>A blk back-end of either kind on the same image; <paramref name="vmmArgs"/> go to ours only.</summary>
    public static Task<BackendProcess> StartBlkAsync(BackendKind kind, string image, string socket, int queues = 1, bool readOnly = false, IReadOnlyList<string>? vmmArgs = null) =>
        kind == BackendKind.StorageDaemon
            ? StartStorageDaemonAsync(image, socket, queues, writable: !readOnly)
            : StartVmmBlkAsync(image, socket, queues, readOnly, vmmArgs);

    static async Task<BackendProcess> StartVmmAsync(IReadOnlyList<string> args, string socket)
    {
        await EnsureVmmBuiltAsync().ConfigureAwait(false);
        var env = new Dictionary<string, string?> { ["VMM_BUILD_ONLY"] = null };
        return await StartAsync(ChildProcess.Start("vmm", RepoLayout.VmmLauncher, args, env), socket).ConfigureAwait(false);
    }

    /// <summary>Builds src/Vmm.Host once (VMM_BUILD_ONLY=1 ./vmm), so that no test times out on a build.</summary>
    static async Task EnsureVmmBuiltAsync()
    {
        await BuildGate.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_vmmBuilt) return;
            var launcher = RepoLayout.VmmLauncher;
            if (!File.Exists(launcher))
                Assert.Fail($"The launcher {launcher} is missing.");
            using var p = ChildProcess.Start("vmm build", launcher, [], new Dictionary<string, string?> { ["VMM_BUILD_ONLY"] = "1" });
            if (!await p.WaitForExitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false))
                Assert.Fail($"VMM_BUILD_ONLY=1 {launcher} did not finish within 5 minutes.");
            if (p.ExitCode != 0)
                Assert.Fail($"VMM_BUILD_ONLY=1 {launcher} failed (exit {p.ExitCode}):\n{p.OutputTail()}");
            _vmmBuilt = true;
        }
        finally
        {
            BuildGate.Release();
        }
    }

    static async Task<BackendProcess> StartAsync(ChildProcess process, string socket, Action? cleanUp = null)
    {
        var backend = new BackendProcess(process, socket, cleanUp);
        var until = DateTime.UtcNow + SocketTimeout;
        while (!IsSocket(socket))
        {
            if (process.HasExited || DateTime.UtcNow > until)
            {
                var what = process.HasExited
                    ? $"The back-end exited (code {process.ExitCode}) without creating its socket {socket}."
                    : $"The back-end did not create its socket {socket} within {SocketTimeout.TotalSeconds:0} s.";
                var message = $"{what}\n{process.Describe()}\n--- output ---\n{process.OutputTail()}";
                backend.Dispose();
                throw new AssertionException(message);
            }
            await Task.Delay(20).ConfigureAwait(false);
        }
        return backend;
    }

    // The socket file appears at bind(); listen() follows at once, and QEMU needs far longer to start.
    // The work directory is fresh, so nothing else can sit at this path.
    static bool IsSocket(string path) => File.Exists(path);

    static string? FindOnPath(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var path = Path.Combine(dir, name);
            if (File.Exists(path)) return path;
        }
        return null;
    }

    public string Describe() => $"{_process.Describe()}\n--- back-end output (last lines) ---\n{_process.OutputTail()}";

    /// <summary>SIGTERM, then SIGKILL after 10 s.</summary>
    public Task StopAsync() => _process.StopAsync(TimeSpan.FromSeconds(10));

    public void Dispose()
    {
        _process.Dispose();
        _cleanUp?.Invoke();
    }
}
