using Akka.Actor;
using Akka.Event;
using Vmm.Core.Events;
using Vmm.Core.Interrupts;

namespace Vmm.Core.Machine;

/// <summary>
/// The VM, top of the actor tree (<c>/user/vm</c>): it creates and owns its interrupt controller
/// (<c>interrupts</c>), its notifier loop (one epoll thread that watches every proxied call
/// notifier of its devices) and its devices (one child each, from <see cref="AttachDevice"/>), and
/// decides what a device's failure means for the VM. The VM lives on whatever a device does:
/// <list type="bullet">
/// <item>a device that gave up (<see cref="DeviceFailed"/>) stays attached, needing the guest's
/// reset; it is listed as failed until it reports <see cref="DeviceRecovered"/>;</item>
/// <item>a device that met a failure it cannot judge (<see cref="DeviceEscalated"/>) gets the VM's
/// <see cref="DeviceDecision"/> (<see cref="VmSettings.UnexpectedDeviceFailure"/>), logged;</item>
/// <item>a child whose own code throws is resumed with its state (a device keeps its snapshot),
/// and the failure is logged: never Akka's default restart, which would drop that state.</item>
/// </list>
/// </summary>
public sealed class VmActor : ReceiveActor
{
    public const string InterruptsName = "interrupts";

    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly VmSettings _settings;
    private readonly Dictionary<string, IActorRef> _devices = [];
    private readonly Dictionary<string, DeviceFailed> _failed = [];
    private IActorRef _interrupts = ActorRefs.Nobody;
    private EventNotifierLoop? _notifiers;

    public VmActor(VmSettings settings)
    {
        _settings = settings;
        Receive<AttachDevice>(HandleAttach);
        Receive<DetachDevice>(HandleDetach);
        Receive<DeviceFailed>(HandleDeviceFailed);
        Receive<DeviceRecovered>(HandleDeviceRecovered);
        Receive<DeviceEscalated>(HandleEscalated);
        Receive<Terminated>(HandleTerminated);
        Receive<GetDevices>(_ => Sender.Tell(CurrentDevices()));
        Receive<GetInterruptController>(_ => Sender.Tell(new InterruptController(_interrupts)));
        Receive<Status>(_ => { }); // a stray answer is not answered back
        ReceiveAny(m => Sender.Tell(new Status.Failure(new NotSupportedException($"The VM does not handle {m.GetType().Name}."))));
    }

    public static Props Props(IInterruptSink? sink = null) => Props(new VmSettings { InterruptSink = sink });

    public static Props Props(VmSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        return Akka.Actor.Props.Create(() => new VmActor(settings));
    }

    protected override void PreStart()
    {
        _interrupts = Context.ActorOf(InterruptControllerActor.Props(_settings.InterruptSink), InterruptsName);
        _notifiers = new EventNotifierLoop($"{Self.Path.Name} notifiers");
        ILoggingAdapter log = _log;
        _notifiers.CallbackFailed += e => log.Error(e, "A notifier callback of the VM failed");
        _settings.Started?.Invoke(Resources);
    }

    /// <summary>
    /// Runs after the devices (children) stopped, so no registration of theirs is left; the loop's
    /// thread ends here.
    /// </summary>
    protected override void PostStop() => _notifiers?.Dispose();

    /// <summary>A child's own code threw: resumed with its state, logged (see the class remarks).</summary>
    protected override SupervisorStrategy SupervisorStrategy() =>
        new OneForOneStrategy(-1, -1, Decide, loggingEnabled: false);

    private Directive Decide(Exception cause)
    {
        if (cause is ActorInitializationException or ActorKilledException or DeathPactException)
        {
            // Akka's lifecycle failures: a child that cannot even start (or was killed) stops.
            _log.Error(cause, "A VM child could not go on; stopping it");
            return Directive.Stop;
        }

        _log.Error(cause, "A VM child failed; the VM keeps it, with its state, and goes on");
        return Directive.Resume;
    }

    private VmResources Resources => new(Self, _interrupts, _notifiers!);

    private void HandleAttach(AttachDevice message)
    {
        if (message.Name == InterruptsName || _devices.ContainsKey(message.Name))
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException($"A device named '{message.Name}' already exists.")));
            return;
        }

        IActorRef device;
        try
        {
            device = Context.ActorOf(message.CreateProps(Resources), message.Name);
        }
        catch (Exception e) when (e is InvalidActorNameException or ArgumentException or InvalidOperationException)
        {
            Sender.Tell(new Status.Failure(e));
            return;
        }

        Context.Watch(device);
        _devices[message.Name] = device;
        _failed.Remove(message.Name);
        Sender.Tell(new DeviceAttached(message.Name, device));
    }

    private void HandleDetach(DetachDevice message)
    {
        if (_devices.Remove(message.Name, out IActorRef? device))
        {
            Context.Unwatch(device);
            Context.Stop(device);
        }

        _failed.Remove(message.Name);
        Sender.Tell(new DeviceDetached(message.Name));
    }

    private void HandleDeviceFailed(DeviceFailed message)
    {
        _log.Warning("Device {0} failed: {1}", message.Name, message.Reason);
        _failed[message.Name] = message;
    }

    private void HandleDeviceRecovered(DeviceRecovered message)
    {
        if (_failed.Remove(message.Name))
        {
            _log.Info("Device {0} works again", message.Name);
        }
    }

    private void HandleEscalated(DeviceEscalated message)
    {
        DeviceFailurePolicy policy = _settings.UnexpectedDeviceFailure;
        _log.Error(
            "Device {0} failed unexpectedly ({1}); the VM decides: {2}",
            message.Name,
            message.Reason,
            policy == DeviceFailurePolicy.Reconnect ? "keep its snapshot and reconnect" : "it needs the guest's reset (DEVICE_NEEDS_RESET)");
        Sender.Tell(new DeviceDecision(message.Name, policy));
    }

    private void HandleTerminated(Terminated message)
    {
        foreach ((string name, IActorRef device) in _devices)
        {
            if (device.Equals(message.ActorRef))
            {
                _devices.Remove(name);
                break;
            }
        }
    }

    /// <summary>Each device once: live (working or reconnecting) or failed (gave up and awaiting a reset, or stopped).</summary>
    private Devices CurrentDevices() =>
        new(
            _devices.Where(d => !_failed.ContainsKey(d.Key)).ToDictionary(d => d.Key, d => d.Value),
            [.. _failed.Values]);
}

/// <summary>How a <see cref="VmActor"/> runs.</summary>
public sealed record VmSettings
{
    /// <summary>Where the interrupt controller delivers (the host's vCPU injection); null: none until one is attached.</summary>
    public IInterruptSink? InterruptSink { get; init; }

    /// <summary>What a device that escalates an unexpected failure does (<see cref="DeviceEscalated"/>).</summary>
    public DeviceFailurePolicy UnexpectedDeviceFailure { get; init; } = DeviceFailurePolicy.GiveUp;

    /// <summary>Called once the VM has created its interrupt controller and notifier loop (an embedding host registers them).</summary>
    public Action<VmResources>? Started { get; init; }
}

/// <summary>
/// What the VM hands each device it creates: the VM itself, its interrupt controller, and its
/// notifier loop (which watches the eventfds a device must proxy, one thread for the whole VM).
/// </summary>
public sealed record VmResources(IActorRef Vm, IActorRef InterruptController, EventNotifierLoop Notifiers);
