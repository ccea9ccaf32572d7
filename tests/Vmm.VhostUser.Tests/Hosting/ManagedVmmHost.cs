using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Vmm.VhostUser.Hosting;

namespace Vmm.VhostUser.Tests.Hosting;

/// <summary>
/// A started generic host with Akka.Hosting, <see cref="ManagedVmmHostingExtensions.AddManagedVmm(IServiceCollection, IConfiguration)"/>
/// bound to the "ManagedVmm" section of its configuration, and <see cref="ManagedVmmHostingExtensions.WithManagedVmm"/>;
/// Akka logs through ILogger into <see cref="Logs"/>. Built and started in a helper, stopped in Dispose.
/// </summary>
internal sealed class ManagedVmmHost : IAsyncDisposable
{
    private ManagedVmmHost(IHost host, ConcurrentQueue<string> logs)
    {
        Host = host;
        Logs = logs;
    }

    public IHost Host { get; }

    public IServiceProvider Services => Host.Services;

    public ActorSystem System => Services.GetRequiredService<ActorSystem>();

    public ActorRegistry Registry => Services.GetRequiredService<ActorRegistry>();

    public IManagedVmm Vmm => Services.GetRequiredService<IManagedVmm>();

    /// <summary>Every log line written through ILogger, as "Category: message".</summary>
    public ConcurrentQueue<string> Logs { get; }

    /// <param name="configure">The WithManagedVmm callback; null leaves WithManagedVmm out altogether.</param>
    /// <param name="configuration">Configuration keys (ManagedVmm:...), as appsettings.json would give them.</param>
    public static async Task<ManagedVmmHost> StartAsync(
        Action<ManagedVmmBuilder>? configure,
        Action<IServiceCollection>? services = null,
        IReadOnlyDictionary<string, string?>? configuration = null)
    {
        HostApplicationBuilder builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(configuration ?? new Dictionary<string, string?>());
        var logs = new ConcurrentQueue<string>();
        builder.Logging.ClearProviders().AddProvider(new QueueLoggerProvider(logs));
        builder.Services
            .AddManagedVmm(builder.Configuration.GetSection(ManagedVmmOptions.SectionName))
            .AddAkka("embed-" + Guid.NewGuid().ToString("N")[..8], (akka, _) =>
            {
                akka.AddHocon("akka.stdout-loglevel = OFF\nakka.log-dead-letters = off", HoconAddMode.Prepend)
                    .ConfigureLoggers(l =>
                    {
                        l.LogLevel = Akka.Event.LogLevel.InfoLevel;
                        l.ClearLoggers();
                        l.AddLoggerFactory();
                    });
                if (configure is not null)
                {
                    akka.WithManagedVmm(configure);
                }
            });
        services?.Invoke(builder.Services);
        IHost host = builder.Build();
        await host.StartAsync();
        return new ManagedVmmHost(host, logs);
    }

    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await Host.StopAsync(cts.Token);
        Host.Dispose();
    }

    private sealed class QueueLoggerProvider(ConcurrentQueue<string> logs) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new QueueLogger(categoryName, logs);

        public void Dispose()
        {
        }

        private sealed class QueueLogger(string category, ConcurrentQueue<string> logs) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                logs.Enqueue($"{category}: {formatter(state, exception)}");
        }
    }
}
