using System.Text.RegularExpressions;

namespace Vmm.Interop.Tests.Harness;

public enum GuestDevice
{
    /// <summary>vhost-user-blk-pci on <see cref="GuestOptions.Socket"/>.</summary>
    Blk,
    /// <summary>vhost-user-rng-pci on <see cref="GuestOptions.Socket"/>.</summary>
    Rng,
    /// <summary>QEMU's own virtio-rng-pci, no back-end: checks the guest's rng scenario by itself.</summary>
    BuiltinRng,
}

/// <summary>What the guest runs and which vhost-user device QEMU gives it.</summary>
public sealed record GuestOptions
{
    /// <summary>The /init scenario: blk-rw, blk-ro, blk-mq, blk-loop, blk-big, blk-migrate or rng.</summary>
    public required string Scenario { get; init; }
    /// <summary>The back-end's vhost-user socket (QEMU connects to it); unused for <see cref="GuestDevice.BuiltinRng"/>.</summary>
    public string Socket { get; init; } = "";
    public GuestDevice Device { get; init; } = GuestDevice.Blk;
    /// <summary>vhost-user-blk-pci num-queues.</summary>
    public int Queues { get; init; } = 1;
    /// <summary>vhost-user-blk-pci queue-size; null leaves QEMU's default (128 in QEMU 7.2).</summary>
    public int? QueueSize { get; init; }
    public int Cpus { get; init; } = 1;
    /// <summary>Offset of the area the guest writes, in MiB.</summary>
    public int OffsetMiB { get; init; } = 1;
    /// <summary>Size of the area the guest writes, in MiB.</summary>
    public int SizeMiB { get; init; } = 4;
    /// <summary>Seed of the written pattern, [A-Za-z0-9_-].</summary>
    public string Seed { get; init; } = "0";
    /// <summary>
    /// Guest RAM: null for memory-backend-memfd (sealed by QEMU), else a directory for
    /// memory-backend-file (a file QEMU creates there: /dev/shm, or a hugetlbfs mount).
    /// </summary>
    public string? MemoryPath { get; init; }
    /// <summary>More words for the guest kernel's command line.</summary>
    public string KernelArguments { get; init; } = "";
    /// <summary>More QEMU arguments (a QMP socket, <c>-incoming</c> for a migration destination).</summary>
    public IReadOnlyList<string> ExtraArguments { get; init; } = [];
}

/// <summary>
/// qemu-system-x86_64 (TCG) booting the test kernel and initramfs with one vhost-user device,
/// as docs/serving-qemu.md describes. The serial console is collected; the guest's /init prints
/// <c>VMMTEST key=value</c> marker lines and <c>VMMTEST done</c> before it powers off.
/// Disposing kills QEMU.
/// </summary>
public sealed partial class QemuGuest : IDisposable
{
    public const string Qemu = "qemu-system-x86_64";

    /// <summary>Boot to power-off under TCG on two shared, loaded cores.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(180);

    readonly ChildProcess _process;
    readonly Lock _lock = new();
    readonly List<KeyValuePair<string, string>> _markers = [];
    readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    QemuGuest(GuestOptions options, IReadOnlyList<string> args)
    {
        Options = options;
        _process = ChildProcess.Start($"qemu {options.Scenario}", QemuPath(), args);
        _process.Line += OnLine;
        StartedAt = DateTime.UtcNow;
    }

    public GuestOptions Options { get; }
    public DateTime StartedAt { get; }
    public ChildProcess Process => _process;
    public string Serial => _process.Output;

    public static async Task<QemuGuest> StartAsync(GuestOptions options)
    {
        var image = await GuestImage.GetAsync().ConfigureAwait(false);
        return new QemuGuest(options, Arguments(options, image));
    }

    /// <summary>The full path of qemu-system-x86_64; fails the test when it is not installed.</summary>
    public static string QemuPath()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var path = Path.Combine(dir, Qemu);
            if (File.Exists(path)) return path;
        }
        Assert.Fail($"{Qemu} is not installed (apt-get install qemu-system-x86; ./test installs it).");
        return null!;
    }

    public static IReadOnlyList<string> Arguments(GuestOptions o, GuestImage image)
    {
        var append = $"console=ttyS0 panic=-1 vmmtest={o.Scenario} vmmtest.off={o.OffsetMiB} vmmtest.mib={o.SizeMiB} vmmtest.seed={o.Seed} {o.KernelArguments}";
        string[] device = o.Device switch
        {
            GuestDevice.Blk => ["-chardev", $"socket,id=c0,path={o.Socket}", "-device",
                $"vhost-user-blk-pci,chardev=c0,num-queues={o.Queues}" + (o.QueueSize is { } q ? $",queue-size={q}" : "")],
            GuestDevice.Rng => ["-chardev", $"socket,id=c0,path={o.Socket}", "-device", "vhost-user-rng-pci,chardev=c0"],
            GuestDevice.BuiltinRng => ["-device", "virtio-rng-pci"],
            _ => throw new ArgumentOutOfRangeException(nameof(o)),
        };
        return
        [
            "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", o.Cpus.ToString(), "-m", "256M",
            "-object", o.MemoryPath is null ? "memory-backend-memfd,id=mem,size=256M,share=on" : $"memory-backend-file,id=mem,size=256M,mem-path={o.MemoryPath},share=on",
            "-numa", "node,memdev=mem",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", image.Kernel, "-initrd", image.Initramfs, "-append", append,
            .. device,
            .. o.ExtraArguments,
        ];
    }

    [GeneratedRegex(@"VMMTEST ([A-Za-z0-9_.\-]+)(?:=(\S*))?\s*$")]
    private static partial Regex MarkerRegex();

    void OnLine(string line)
    {
        var m = MarkerRegex().Match(line);
        if (!m.Success) return;
        var key = m.Groups[1].Value;
        lock (_lock) _markers.Add(new(key, m.Groups[2].Value));
        if (key == "done") _done.TrySetResult();
    }

    /// <summary>The last value printed for a marker, or null.</summary>
    public string? Marker(string key)
    {
        lock (_lock) return _markers.LastOrDefault(kv => kv.Key == key).Value;
    }

    public IReadOnlyList<KeyValuePair<string, string>> Markers
    {
        get { lock (_lock) return [.. _markers]; }
    }

    /// <summary>A marker's value; fails the test (with the serial log) when it was not printed.</summary>
    public string Require(string key) =>
        Marker(key) ?? throw Failure($"the guest printed no 'VMMTEST {key}=' line");

    /// <summary>
    /// Waits until /init printed <c>VMMTEST done</c> and QEMU exited; fails the test otherwise,
    /// and at once when <paramref name="backend"/> exits first.
    /// </summary>
    public async Task<TimeSpan> WaitDoneAsync(TimeSpan? timeout = null, BackendProcess? backend = null)
    {
        var limit = timeout ?? DefaultTimeout;
        var deadline = Task.Delay(limit);
        var backendExited = backend?.Process.Exited ?? Task.Delay(Timeout.Infinite);
        var first = await Task.WhenAny(_done.Task, _process.Exited, deadline, backendExited).ConfigureAwait(false);
        if (first == deadline)
        {
            _process.KillTree();
            throw Failure($"the guest did not finish within {limit.TotalSeconds:0} s");
        }
        if (first == backendExited && !_done.Task.IsCompleted)
        {
            _process.KillTree();
            throw Failure($"the back-end exited (code {backend!.Process.ExitCode}) while the guest ran.\n{backend.Describe()}\n");
        }
        if (!_done.Task.IsCompleted)
        {
            // QEMU exited first; give the last serial lines a moment.
            await Task.WhenAny(_done.Task, Task.Delay(500)).ConfigureAwait(false);
            if (!_done.Task.IsCompleted)
                throw Failure($"QEMU exited (code {_process.ExitCode}) before the guest printed 'VMMTEST done'");
        }
        var elapsed = DateTime.UtcNow - StartedAt;
        // poweroff -f follows 'done' immediately.
        if (!await _process.WaitForExitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false))
        {
            _process.KillTree();
            throw Failure("QEMU did not exit within 30 s of 'VMMTEST done'");
        }
        var errors = Markers.Where(kv => kv.Key == "error").Select(kv => kv.Value).ToList();
        if (errors.Count > 0)
            throw Failure($"the guest reported errors: {string.Join(", ", errors)}");
        TestContext.Progress.WriteLine($"guest {Options.Scenario}: boot to done in {elapsed.TotalSeconds:0.0} s");
        return elapsed;
    }

    /// <summary>Waits until a marker was printed with the given value (or any value when null).</summary>
    public async Task WaitForMarkerAsync(string key, string? value = null, TimeSpan? timeout = null)
    {
        var limit = timeout ?? DefaultTimeout;
        var until = DateTime.UtcNow + limit;
        while (DateTime.UtcNow < until)
        {
            lock (_lock)
            {
                if (_markers.Any(kv => kv.Key == key && (value is null || kv.Value == value)))
                    return;
            }
            if (_process.HasExited)
                throw Failure($"QEMU exited (code {_process.ExitCode}) before the guest printed 'VMMTEST {key}={value}'");
            await Task.Delay(50).ConfigureAwait(false);
        }
        _process.KillTree();
        throw Failure($"the guest did not print 'VMMTEST {key}={value}' within {limit.TotalSeconds:0} s");
    }

    /// <summary>SIGKILL to QEMU, as a crash would; waits until it is gone.</summary>
    public async Task KillAsync()
    {
        _process.KillTree();
        if (!await _process.WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false))
            throw Failure("QEMU did not exit within 10 s of SIGKILL");
    }

    public Exception Failure(string what) =>
        new AssertionException($"{what}.\n{_process.Describe()}\n--- serial (last lines) ---\n{_process.OutputTail(60)}");

    /// <summary>Whether this QEMU knows a -device name (for example vhost-user-rng-pci).</summary>
    public static async Task<bool> SupportsDeviceAsync(string device)
    {
        using var p = ChildProcess.Start("qemu -device help", QemuPath(), ["-device", "help"]);
        if (!await p.WaitForExitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false))
            Assert.Fail($"'{Qemu} -device help' did not finish within 60 s.");
        return p.Output.Contains($"name \"{device}\"", StringComparison.Ordinal);
    }

    public void Dispose() => _process.Dispose();
}
