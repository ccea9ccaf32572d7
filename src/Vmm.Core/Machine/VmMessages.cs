using Akka.Actor;

namespace Vmm.Core.Machine;

/// <summary>
/// Create device <paramref name="Name"/> as a child of the VM, from the Props that
/// <paramref name="CreateProps"/> makes with the VM's <see cref="VmResources"/>; answered with
/// <see cref="DeviceAttached"/> (or a Status.Failure for a name in use or invalid).
/// </summary>
public sealed record AttachDevice(string Name, Func<VmResources, Props> CreateProps)
{
    /// <summary>A device whose Props need nothing from the VM.</summary>
    public AttachDevice(string name, Props props)
        : this(name, _ => props)
    {
    }
}

public sealed record DeviceAttached(string Name, IActorRef Device);

/// <summary>Stop device <paramref name="Name"/>; answered with <see cref="DeviceDetached"/>.</summary>
public sealed record DetachDevice(string Name);

public sealed record DeviceDetached(string Name);

/// <summary>
/// A device gave up (a protocol violation, an incompatible back-end, reconnecting off or
/// exhausted): it needs the guest's reset (DEVICE_NEEDS_RESET), or it stopped (it never came up).
/// Sent by the device's supervisor to its parent and published on the event stream; the VM keeps running.
/// </summary>
public sealed record DeviceFailed(string Name, string Reason);

/// <summary>A device that had given up is working again (the guest reset it and it connected). Sent to the VM and published.</summary>
public sealed record DeviceRecovered(string Name);

/// <summary>
/// A device met a failure it does not know how to judge (not a lost back-end, not a protocol
/// violation): it asks its VM, serving the guest from its snapshot meanwhile. The VM answers
/// with <see cref="DeviceDecision"/> and logs what it decided.
/// </summary>
public sealed record DeviceEscalated(string Name, string Reason);

/// <summary>What a device does after <see cref="DeviceEscalated"/>.</summary>
public enum DeviceFailurePolicy
{
    /// <summary>Give up: the device sets DEVICE_NEEDS_RESET and keeps its snapshot until the guest resets it.</summary>
    GiveUp,

    /// <summary>Keep the snapshot and reconnect with backoff, as for a lost back-end.</summary>
    Reconnect,
}

/// <summary>The VM's answer to <see cref="DeviceEscalated"/>.</summary>
public sealed record DeviceDecision(string Name, DeviceFailurePolicy Policy);

/// <summary>Query: the VM's devices; answered with <see cref="Devices"/>.</summary>
public sealed class GetDevices
{
    public static readonly GetDevices Instance = new();

    private GetDevices()
    {
    }
}

/// <summary>The live devices by name, and the failures of those that stopped.</summary>
public sealed record Devices(IReadOnlyDictionary<string, IActorRef> Live, IReadOnlyList<DeviceFailed> Failed);

/// <summary>Query: the VM's InterruptControllerActor; answered with <see cref="InterruptController"/>.</summary>
public sealed class GetInterruptController
{
    public static readonly GetInterruptController Instance = new();

    private GetInterruptController()
    {
    }
}

public sealed record InterruptController(IActorRef Controller);
