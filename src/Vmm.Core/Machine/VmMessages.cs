using Akka.Actor;

namespace Vmm.Core.Machine;

/// <summary>Create device <paramref name="Name"/> as a child of the VM from <paramref name="Props"/>; answered with <see cref="DeviceAttached"/>.</summary>
public sealed record AttachDevice(string Name, Props Props);

public sealed record DeviceAttached(string Name, IActorRef Device);

/// <summary>Stop device <paramref name="Name"/>; answered with <see cref="DeviceDetached"/>.</summary>
public sealed record DetachDevice(string Name);

public sealed record DeviceDetached(string Name);

/// <summary>
/// A device gave up (a protocol violation, or reconnecting was off or exhausted). Sent by the
/// device's supervisor to its parent and published on the event stream; the VM keeps running.
/// </summary>
public sealed record DeviceFailed(string Name, string Reason);

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
