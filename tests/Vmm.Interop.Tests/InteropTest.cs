using NUnit.Framework.Interfaces;
using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// Base of the interop tests: a fresh work directory per test (image, sockets), and every
/// process started through <see cref="Own{T}"/> killed at tear-down, with its output
/// written to the test log when the test failed. One guest at a time: QEMU under TCG needs
/// the CPUs.
/// </summary>
[Category("Interop")]
[NonParallelizable]
public abstract class InteropTest
{
    readonly List<IDisposable> _owned = [];
    readonly List<Func<string>> _logs = [];

    protected string WorkDir { get; private set; } = "";

    [SetUp]
    public void CreateWorkDir()
    {
        // Short path: a Unix socket path must fit in 108 bytes.
        WorkDir = Directory.CreateTempSubdirectory("vmm-interop-").FullName;
        _owned.Clear();
        _logs.Clear();
    }

    [TearDown]
    public async Task StopEverything()
    {
        var failed = TestContext.CurrentContext.Result.Outcome.Status == TestStatus.Failed;
        for (var i = _owned.Count - 1; i >= 0; i--)
        {
            if (_owned[i] is BackendProcess backend)
                await backend.StopAsync();
            _owned[i].Dispose();
        }
        if (failed)
        {
            foreach (var log in _logs)
                await TestContext.Out.WriteLineAsync(log());
        }
        try { Directory.Delete(WorkDir, recursive: true); }
        catch (IOException) { }
    }

    protected string PathIn(string name) => Path.Combine(WorkDir, name);

    protected T Own<T>(T item) where T : IDisposable
    {
        _owned.Add(item);
        switch (item)
        {
            case QemuGuest g:
                _logs.Add(() => $"=== {g.Process.Describe()}\n{g.Serial}");
                break;
            case BackendProcess b:
                _logs.Add(() => $"=== {b.Process.Describe()}\n{b.Log}");
                break;
        }
        return item;
    }

    protected async Task<BackendProcess> StartBlkAsync(BackendKind kind, string image, string socket, int queues = 1, bool readOnly = false, IReadOnlyList<string>? vmmArgs = null) =>
        Own(await BackendProcess.StartBlkAsync(kind, image, socket, queues, readOnly, vmmArgs));

    /// <summary>A virtiofsd of <paramref name="kind"/> exporting <paramref name="sharedDir"/>; it serves one connection.</summary>
    protected async Task<BackendProcess> StartVirtiofsdAsync(VirtiofsdKind kind, string sharedDir, string socket, string? tag = null) =>
        Own(await BackendProcess.StartVirtiofsdAsync(kind, sharedDir, socket, tag));

    /// <summary>DPDK testpmd echoing every frame on one vhost-user port.</summary>
    protected async Task<BackendProcess> StartTestpmdAsync(string socket, int queues = 1) =>
        Own(await BackendProcess.StartTestpmdAsync(socket, queues));

    protected async Task<QemuGuest> StartGuestAsync(GuestOptions options) =>
        Own(await QemuGuest.StartAsync(options));

    /// <summary>Boots a guest and waits for its <c>VMMTEST done</c>; fails early if <paramref name="backend"/> exits.</summary>
    protected async Task<QemuGuest> RunGuestAsync(GuestOptions options, BackendProcess? backend = null)
    {
        var guest = await StartGuestAsync(options);
        await guest.WaitDoneAsync(backend: backend);
        return guest;
    }
}
