namespace Vmm.VhostUser.Frontend;

/// <summary>
/// What a <see cref="VhostUserDeviceSupervisor"/> tells the world outside the actor system about
/// its connection: created before the supervisor, handed to its Props, and exposed by
/// <see cref="VhostUserDevice"/>. Handlers run on the supervisor's thread: they must be short and
/// must not call back into the device synchronously.
/// </summary>
public sealed class VhostUserDeviceEvents
{
    /// <summary>A ready connection was lost; the device keeps serving from its snapshot and reconnects.</summary>
    public event Action<string>? ConnectionLost;

    /// <summary>A new connection is ready and the snapshot was replayed; the argument is the reconnect attempt that succeeded (1-based).</summary>
    public event Action<int>? ConnectionRestored;

    /// <summary>The device gave up (protocol violation, reconnect off, reconnect-max exhausted): it needs a reset.</summary>
    public event Action<string>? Failed;

    /// <summary>The back-end announced a configuration change and the cached config was read again.</summary>
    public event Action? ConfigChanged;

    internal void RaiseConfigChanged() => ConfigChanged?.Invoke();

    internal void RaiseConnectionLost(string reason) => ConnectionLost?.Invoke(reason);

    internal void RaiseConnectionRestored(int attempt) => ConnectionRestored?.Invoke(attempt);

    internal void RaiseFailed(string reason) => Failed?.Invoke(reason);
}
