using Vmm.Virtio.Driver;

namespace Vmm.Host.Run;

/// <summary>
/// Whether a device asked the guest for a reset (DEVICE_NEEDS_RESET, virtio 1.2, 2.1.2), and
/// why: the guest driver reports the status bit, the device's Faulted event the reason. The
/// workloads' waits look here so that a device that gave up ends them at once instead of at
/// their request timeout.
/// </summary>
public sealed class DeviceHealth
{
    /// <summary>How long a wait sleeps at most before it looks again.</summary>
    public static readonly TimeSpan CheckInterval = TimeSpan.FromMilliseconds(100);

    private string? _needsReset;
    private string? _lastFault;

    public bool NeedsReset => Volatile.Read(ref _needsReset) is not null;

    /// <summary>Why the device needs a reset (empty while it does not).</summary>
    public string Reason => Volatile.Read(ref _needsReset) ?? string.Empty;

    /// <summary>The device reported a fault (its Faulted event); the reason given with the status bit that follows.</summary>
    public void Faulted(string reason) => Volatile.Write(ref _lastFault, reason);

    /// <summary>The guest driver saw DEVICE_NEEDS_RESET.</summary>
    public void SetNeedsReset() =>
        Volatile.Write(ref _needsReset, Volatile.Read(ref _lastFault) ?? "it set DEVICE_NEEDS_RESET");

    /// <summary>The guest reset the device: healthy until it says otherwise.</summary>
    public void Clear()
    {
        Volatile.Write(ref _lastFault, null);
        Volatile.Write(ref _needsReset, null);
    }

    /// <summary>
    /// Sleeps on <paramref name="queue"/>'s interrupt until it comes (true) or
    /// <paramref name="deadline"/> (Environment.TickCount64) passes (false), looking at
    /// <paramref name="health"/> at least every <see cref="CheckInterval"/>: a device that asked
    /// for a reset ends the sleep with <see cref="DeviceNeedsResetException"/>. The ring itself is
    /// not looked at, so a lost interrupt still shows as a timeout.
    /// </summary>
    public static bool SleepUntilInterrupt(VirtioDriverQueue queue, DeviceHealth? health, long deadline)
    {
        ArgumentNullException.ThrowIfNull(queue);
        for (long left = deadline - Environment.TickCount64; left > 0; left = deadline - Environment.TickCount64)
        {
            health?.ThrowIfNeedsReset();
            if (queue.WaitForInterrupt(TimeSpan.FromMilliseconds(health is null ? left : Math.Min(left, (long)CheckInterval.TotalMilliseconds))))
            {
                return true;
            }
        }

        return false;
    }

    public void ThrowIfNeedsReset()
    {
        if (Volatile.Read(ref _needsReset) is { } reason)
        {
            throw new DeviceNeedsResetException(reason);
        }
    }
}

/// <summary>A device the workload was using set DEVICE_NEEDS_RESET; <see cref="GuestVm.RunWithResets"/> resets it and starts the workload again.</summary>
public sealed class DeviceNeedsResetException(string reason) : Exception($"the device needs a reset: {reason}")
{
    public string Reason { get; } = reason;
}
